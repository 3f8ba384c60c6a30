/* The C API from C: generate an image with progress and previews, cancel mid-run, and the
 * error paths (a buffer too small, an empty prompt, a corrupt model, a short error buffer).
 * Usage: main MODEL CORRUPT_MODEL. Exit 0 when every check holds. */
#include "ldm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int steps_seen, previews, preview_size_ok;

static void on_step(void *user, int step, int total, const uint8_t *preview, int pw, int ph) {
    (void)total;
    steps_seen = step;
    if (preview) {
        previews++;
        preview_size_ok = pw > 0 && ph > 0;
        /* Touch the whole preview: it must be readable during the call. */
        volatile uint8_t last = preview[(size_t)pw * ph * 3 - 1];
        (void)last;
    }
    if (user && step == 2) ldm_cancel_set((ldm_cancel *)user);
}

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "FAILED %s: ", #cond);                                             \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fprintf(stderr, "\n");                                                             \
            return 1;                                                                          \
        }                                                                                      \
    } while (0)

int main(int argc, char **argv) {
    CHECK(argc == 3, "usage: main MODEL CORRUPT_MODEL");
    char err[512] = {0};
    printf("ldm %s\n", ldm_version());

    ldm_model *m = ldm_model_open(argv[1], err, sizeof err);
    CHECK(m != NULL, "open: %s", err);
    int size = ldm_model_image_size(m);
    CHECK(size > 0, "image size %d", size);
    size_t len = (size_t)size * size * 3;
    uint8_t *rgb = calloc(len, 1);
    CHECK(rgb != NULL, "out of memory");

    ldm_request r;
    memset(&r, 0, sizeof r);
    r.prompt = "a red circle above a blue square";
    r.steps = 4;
    r.seed = 1;
    r.preview_every = 2;
    int w = 0, h = 0;
    int rc = ldm_generate(m, &r, on_step, NULL, NULL, rgb, len, &w, &h, err, sizeof err);
    CHECK(rc == LDM_OK, "generate returned %d: %s", rc, err);
    CHECK(w == size && h == size, "size %dx%d", w, h);
    CHECK(steps_seen == 4, "saw %d steps", steps_seen);
    CHECK(previews == 2 && preview_size_ok, "saw %d previews", previews);
    size_t distinct = 0;
    for (size_t i = 1; i < len; i++) distinct += rgb[i] != rgb[0];
    CHECK(distinct > len / 10, "the image is nearly constant");
    printf("generated %dx%d in %d steps with %d previews\n", w, h, steps_seen, previews);

    /* The same request again (the model keeps its prepared plans): the same pixels. */
    uint8_t *again = calloc(len, 1);
    CHECK(again != NULL, "out of memory");
    rc = ldm_generate(m, &r, NULL, NULL, NULL, again, len, &w, &h, err, sizeof err);
    CHECK(rc == LDM_OK && memcmp(rgb, again, len) == 0, "second run differs (%d: %s)", rc, err);
    free(again);

    /* Cancel from the progress callback at step 2: the run stops before step 3. */
    ldm_cancel *c = ldm_cancel_new();
    steps_seen = 0;
    rc = ldm_generate(m, &r, on_step, c, c, rgb, len, &w, &h, err, sizeof err);
    CHECK(rc == LDM_CANCELLED, "cancel returned %d: %s", rc, err);
    CHECK(steps_seen == 2, "cancelled after %d steps", steps_seen);
    ldm_cancel_free(c);
    printf("cancelled after step %d: %s\n", steps_seen, err);

    /* A buffer too small says how large it must be. */
    rc = ldm_generate(m, &r, NULL, NULL, NULL, rgb, 10, &w, &h, err, sizeof err);
    CHECK(rc == LDM_BUFFER_SMALL && w == size, "small buffer returned %d: %s", rc, err);

    /* An empty prompt is an error with a message. */
    r.prompt = "";
    rc = ldm_generate(m, &r, NULL, NULL, NULL, rgb, len, &w, &h, err, sizeof err);
    CHECK(rc == LDM_ERROR && strstr(err, "prompt") != NULL, "empty prompt: %d %s", rc, err);
    printf("empty prompt: %s\n", err);

    /* A corrupt (truncated) model: NULL and a message, never a crash. */
    ldm_model *bad = ldm_model_open(argv[2], err, sizeof err);
    CHECK(bad == NULL && strlen(err) > 0, "corrupt model opened");
    printf("corrupt model: %s\n", err);
    char small[8];
    bad = ldm_model_open(argv[2], small, sizeof small);
    CHECK(bad == NULL && strlen(small) == sizeof small - 1, "short buffer: '%s'", small);
    bad = ldm_model_open(NULL, err, sizeof err);
    CHECK(bad == NULL && strstr(err, "NULL") != NULL, "NULL path: %s", err);

    ldm_model_free(m);
    ldm_model_free(NULL);
    free(rgb);
    printf("ok\n");
    return 0;
}
