// Kotlin side of android/ldm_jni.c. NOT built here (no Android NDK or Gradle in this
// repository's CI); see tools/ldm-capi/README.md for the build.
package dev.ldmedge

object Ldm {
    init {
        System.loadLibrary("ldm")      // libldm.so (the Rust cdylib)
        System.loadLibrary("ldm_jni")  // libldm_jni.so (ldm_jni.c)
    }

    @JvmStatic external fun open(path: String): Long
    @JvmStatic external fun close(model: Long)
    @JvmStatic external fun newCancel(): Long
    @JvmStatic external fun cancel(cancel: Long)
    @JvmStatic external fun freeCancel(cancel: Long)

    /** RGB bytes of a size x size image, or null when cancelled; throws on errors. */
    @JvmStatic external fun generate(model: Long, prompt: String, steps: Int, seed: Long, cancel: Long): ByteArray?
}
