/* JNI glue for Android apps over include/ldm.h (class dev.ldmedge.Ldm in Ldm.kt).
 * NOT built or run in this repository's CI: there is no Android NDK here. Build it with the
 * NDK's clang next to libldm.so (see tools/ldm-capi/README.md). */
#include <jni.h>
#include <stdint.h>
#include <stdlib.h>

#include "../include/ldm.h"

static void throw_error(JNIEnv *env, const char *msg) {
    jclass cls = (*env)->FindClass(env, "java/lang/RuntimeException");
    if (cls) (*env)->ThrowNew(env, cls, msg);
}

JNIEXPORT jlong JNICALL Java_dev_ldmedge_Ldm_open(JNIEnv *env, jclass cls, jstring path) {
    (void)cls;
    char err[512];
    const char *p = (*env)->GetStringUTFChars(env, path, NULL);
    if (!p) return 0;
    ldm_model *m = ldm_model_open(p, err, sizeof err);
    (*env)->ReleaseStringUTFChars(env, path, p);
    if (!m) throw_error(env, err);
    return (jlong)(intptr_t)m;
}

JNIEXPORT void JNICALL Java_dev_ldmedge_Ldm_close(JNIEnv *env, jclass cls, jlong model) {
    (void)env;
    (void)cls;
    ldm_model_free((ldm_model *)(intptr_t)model);
}

JNIEXPORT jlong JNICALL Java_dev_ldmedge_Ldm_newCancel(JNIEnv *env, jclass cls) {
    (void)env;
    (void)cls;
    return (jlong)(intptr_t)ldm_cancel_new();
}

JNIEXPORT void JNICALL Java_dev_ldmedge_Ldm_cancel(JNIEnv *env, jclass cls, jlong cancel) {
    (void)env;
    (void)cls;
    ldm_cancel_set((ldm_cancel *)(intptr_t)cancel);
}

JNIEXPORT void JNICALL Java_dev_ldmedge_Ldm_freeCancel(JNIEnv *env, jclass cls, jlong cancel) {
    (void)env;
    (void)cls;
    ldm_cancel_free((ldm_cancel *)(intptr_t)cancel);
}

/* Returns the RGB bytes (size x size x 3), or null after a thrown exception; a cancelled run
 * returns null without an exception. */
JNIEXPORT jbyteArray JNICALL Java_dev_ldmedge_Ldm_generate(JNIEnv *env, jclass cls, jlong model,
                                                           jstring prompt, jint steps,
                                                           jlong seed, jlong cancel) {
    (void)cls;
    ldm_model *m = (ldm_model *)(intptr_t)model;
    int size = ldm_model_image_size(m);
    size_t len = (size_t)size * size * 3;
    uint8_t *rgb = malloc(len);
    if (!rgb) {
        throw_error(env, "out of memory");
        return NULL;
    }
    const char *p = (*env)->GetStringUTFChars(env, prompt, NULL);
    ldm_request r = {0};
    r.prompt = p;
    r.steps = steps;
    r.seed = (uint64_t)seed;
    char err[512];
    int w = 0, h = 0;
    int rc = ldm_generate(m, &r, NULL, NULL, (ldm_cancel *)(intptr_t)cancel, rgb, len, &w, &h,
                          err, sizeof err);
    (*env)->ReleaseStringUTFChars(env, prompt, p);
    jbyteArray out = NULL;
    if (rc == LDM_OK) {
        out = (*env)->NewByteArray(env, (jsize)len);
        if (out) (*env)->SetByteArrayRegion(env, out, 0, (jsize)len, (const jbyte *)rgb);
    } else if (rc != LDM_CANCELLED) {
        throw_error(env, err);
    }
    free(rgb);
    return out;
}
