/* ldm.h: the C API of the ldm-edge runtime (libldm.so / libldm.a, crate tools/ldm-capi).
 *
 * Thread safety: a model may be used by one ldm_generate call at a time; a cancel flag may be
 * set from any thread. No function panics or aborts across this boundary: every failure is a
 * return code and a NUL-terminated message written into the caller's buffer (truncated to
 * fit). Strings are UTF-8. Version: LDM_API_VERSION; functions are only ever added. */
#ifndef LDM_H
#define LDM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LDM_API_VERSION 1

/* Return codes of ldm_generate. */
#define LDM_OK 0
#define LDM_ERROR 1          /* message in err */
#define LDM_CANCELLED 2      /* the cancel flag was set */
#define LDM_BUFFER_SMALL 3   /* rgb_len < width * height * 3; out_w/out_h say what is needed */

typedef struct ldm_model ldm_model;
typedef struct ldm_cancel ldm_cancel;

/* Called after every denoising step. preview_rgb is NULL except on preview steps
 * (ldm_request.preview_every), when it holds preview_w * preview_h * 3 bytes of RGB valid
 * only during the call. */
typedef void (*ldm_progress_fn)(void *user, int step, int total, const uint8_t *preview_rgb,
                                int preview_w, int preview_h);

/* One request. Zero (or NULL) fields take the model's defaults. */
typedef struct {
    const char *prompt;          /* required, not empty */
    const char *negative_prompt; /* NULL or "" for none */
    int width, height;           /* 0: the model's native size */
    int steps;                   /* 0: the model's */
    float guidance;              /* 0: the model's; 1 disables classifier-free guidance */
    uint64_t seed;
    int preview_every;           /* 0: no previews; k: every k-th step and the last */
} ldm_request;

/* "0.1.0" etc.: the runtime's version. */
const char *ldm_version(void);

/* Maps and validates a model file. NULL on failure, with the reason in err. The first
 * ldm_generate prepares the model's plans for its size and keeps them (host memory, or device
 * memory on a GPU), so later requests of that size start at once; ldm_model_free releases them. */
ldm_model *ldm_model_open(const char *path, char *err, size_t err_len);
void ldm_model_free(ldm_model *model);

/* The model's native image size (0 for NULL). */
int ldm_model_image_size(const ldm_model *model);

ldm_cancel *ldm_cancel_new(void);
void ldm_cancel_set(ldm_cancel *cancel);
void ldm_cancel_free(ldm_cancel *cancel);

/* Generates one image into rgb (width * height * 3 bytes, row-major RGB). progress, user and
 * cancel may be NULL. */
int ldm_generate(ldm_model *model, const ldm_request *request, ldm_progress_fn progress,
                 void *user, const ldm_cancel *cancel, uint8_t *rgb, size_t rgb_len,
                 int *out_w, int *out_h, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif
#endif /* LDM_H */
