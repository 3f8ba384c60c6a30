//! The C API of the ldm-edge runtime: the functions of `include/ldm.h`.
//!
//! Every entry point catches panics (`catch_unwind`) and turns them, like every error, into a
//! return code and a message in the caller's buffer: unwinding across the C boundary would be
//! undefined behaviour.
use ldm_edge::model::Model;
use ldm_edge::pipeline::{Cancel, Pipeline, Txt2Img};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub const LDM_OK: c_int = 0;
pub const LDM_ERROR: c_int = 1;
pub const LDM_CANCELLED: c_int = 2;
pub const LDM_BUFFER_SMALL: c_int = 3;

/// An opened model (opaque to C), with the pipeline its requests run on: made by the first
/// `ldm_generate` and kept, so later requests reuse its backend and prepared plans
/// ([`Pipeline::with_plan_reuse`]) instead of preparing every graph again.
pub struct LdmModel {
    // Declared first, so dropped first: it borrows `model`.
    pipe: Option<Pipeline<'static>>,
    // Boxed so its address never changes while `pipe` borrows it.
    model: Box<Model>,
}

/// A cancel flag (opaque to C); shared with the pipeline's own flag.
pub struct LdmCancel {
    flag: Cancel,
}

pub type ProgressFn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        step: c_int,
        total: c_int,
        preview_rgb: *const u8,
        preview_w: c_int,
        preview_h: c_int,
    ),
>;

/// `ldm_request` of the header, field for field.
#[repr(C)]
pub struct LdmRequest {
    pub prompt: *const c_char,
    pub negative_prompt: *const c_char,
    pub width: c_int,
    pub height: c_int,
    pub steps: c_int,
    pub guidance: f32,
    pub seed: u64,
    pub preview_every: c_int,
}

/// Writes `msg` NUL-terminated into `err` (truncated at a character boundary to fit).
fn write_err(err: *mut c_char, len: usize, msg: &str) {
    if err.is_null() || len == 0 {
        return;
    }
    let mut n = msg.len().min(len - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: the caller promises `err` points to `len` writable bytes; n < len.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err as *mut u8, n);
        *err.add(n) = 0;
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    format!("internal error (panic): {what}")
}

/// A C string argument, or an error naming it.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, String> {
    if p.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(p)
        .to_str()
        .map(Some)
        .map_err(|_| format!("{what} is not UTF-8"))
}

#[no_mangle]
pub extern "C" fn ldm_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// # Safety
/// `path` is a NUL-terminated string; `err` points to `err_len` writable bytes or is NULL.
#[no_mangle]
pub unsafe extern "C" fn ldm_model_open(
    path: *const c_char,
    err: *mut c_char,
    err_len: usize,
) -> *mut LdmModel {
    let r = catch_unwind(AssertUnwindSafe(|| -> Result<Box<LdmModel>, String> {
        let path = c_str(path, "path")?.ok_or("path is NULL")?;
        let model = Model::open(std::path::Path::new(path))
            .map_err(|e| format!("cannot open model {path}: {e}"))?;
        Ok(Box::new(LdmModel {
            pipe: None,
            model: Box::new(model),
        }))
    }));
    match r {
        Ok(Ok(m)) => Box::into_raw(m),
        Ok(Err(m)) => {
            write_err(err, err_len, &m);
            std::ptr::null_mut()
        }
        Err(p) => {
            write_err(err, err_len, &panic_message(p));
            std::ptr::null_mut()
        }
    }
}

/// # Safety
/// `model` came from `ldm_model_open` and is not used afterwards (NULL is allowed).
#[no_mangle]
pub unsafe extern "C" fn ldm_model_free(model: *mut LdmModel) {
    if !model.is_null() {
        drop(Box::from_raw(model));
    }
}

/// # Safety
/// `model` is NULL or came from `ldm_model_open`.
#[no_mangle]
pub unsafe extern "C" fn ldm_model_image_size(model: *const LdmModel) -> c_int {
    model
        .as_ref()
        .map_or(0, |m| m.model.config.image_size as c_int)
}

#[no_mangle]
pub extern "C" fn ldm_cancel_new() -> *mut LdmCancel {
    Box::into_raw(Box::new(LdmCancel {
        flag: Cancel::new(),
    }))
}

/// # Safety
/// `cancel` is NULL or came from `ldm_cancel_new`; any thread may call this.
#[no_mangle]
pub unsafe extern "C" fn ldm_cancel_set(cancel: *mut LdmCancel) {
    if let Some(c) = cancel.as_ref() {
        c.flag.cancel();
    }
}

/// # Safety
/// `cancel` came from `ldm_cancel_new` and no generation uses it any more (NULL is allowed).
#[no_mangle]
pub unsafe extern "C" fn ldm_cancel_free(cancel: *mut LdmCancel) {
    if !cancel.is_null() {
        drop(Box::from_raw(cancel));
    }
}

/// # Safety
/// Pointers as the header documents: `model` from `ldm_model_open`, `request` valid, `rgb`
/// pointing to `rgb_len` writable bytes, `out_w`/`out_h`/`cancel`/`err` valid or NULL.
#[no_mangle]
pub unsafe extern "C" fn ldm_generate(
    model: *mut LdmModel,
    request: *const LdmRequest,
    progress: ProgressFn,
    user: *mut c_void,
    cancel: *const LdmCancel,
    rgb: *mut u8,
    rgb_len: usize,
    out_w: *mut c_int,
    out_h: *mut c_int,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        generate(
            model, request, progress, user, cancel, rgb, rgb_len, out_w, out_h,
        )
    }));
    match r {
        Ok(Ok(code)) => code,
        Ok(Err((code, m))) => {
            write_err(err, err_len, &m);
            code
        }
        Err(p) => {
            write_err(err, err_len, &panic_message(p));
            LDM_ERROR
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn generate(
    model: *mut LdmModel,
    request: *const LdmRequest,
    progress: ProgressFn,
    user: *mut c_void,
    cancel: *const LdmCancel,
    rgb: *mut u8,
    rgb_len: usize,
    out_w: *mut c_int,
    out_h: *mut c_int,
) -> Result<c_int, (c_int, String)> {
    let e = |m: String| (LDM_ERROR, m);
    let handle = model.as_mut().ok_or_else(|| e("model is NULL".into()))?;
    // SAFETY: the model is boxed, never moved out or mutated while the handle lives, and
    // `handle.pipe`, the only holder of this reference, is dropped before it (field order).
    // ldm.h allows one call at a time per model, so the pipeline (not Sync) is only ever
    // used by one thread at a time.
    let m: &'static Model = &*(handle.model.as_ref() as *const Model);
    let q = request
        .as_ref()
        .ok_or_else(|| e("request is NULL".into()))?;
    let prompt = c_str(q.prompt, "prompt").map_err(e)?.unwrap_or("");
    let mut req = Txt2Img::new(m, prompt).map_err(|x| e(x.to_string()))?;
    if let Some(n) = c_str(q.negative_prompt, "negative_prompt").map_err(e)? {
        req.negative_prompt = n.to_string();
    }
    let nonneg = |v: c_int, what: &str| {
        usize::try_from(v).map_err(|_| e(format!("{what} is negative ({v})")))
    };
    let (w, h, steps) = (
        nonneg(q.width, "width")?,
        nonneg(q.height, "height")?,
        nonneg(q.steps, "steps")?,
    );
    if w > 0 {
        req.width = w;
    }
    if h > 0 {
        req.height = h;
    }
    if steps > 0 {
        req.steps = steps;
    }
    if q.guidance != 0.0 {
        req.guidance = q.guidance;
    }
    req.seed = q.seed;
    let need = req.width * req.height * 3;
    if !out_w.is_null() {
        *out_w = req.width as c_int;
    }
    if !out_h.is_null() {
        *out_h = req.height as c_int;
    }
    if rgb.is_null() || rgb_len < need {
        return Err((
            LDM_BUFFER_SMALL,
            format!("the image needs {need} bytes; the buffer has {rgb_len}"),
        ));
    }
    let every = nonneg(q.preview_every, "preview_every")?;
    let pipe = match handle.pipe.take() {
        Some(p) => p,
        None => {
            let backend = ldm_edge::backend::select("auto").map_err(|x| e(x.to_string()))?;
            Pipeline::new(m, backend).with_plan_reuse(true)
        }
    };
    let pipe = handle.pipe.insert(
        pipe.with_preview((every > 0 && m.latent_rgb.is_some()).then_some(every))
            .map_err(|x| e(x.to_string()))?,
    );
    let flag = match cancel.as_ref() {
        Some(c) => c.flag.clone(),
        None => Cancel::new(),
    };
    let mut on_step = |p: ldm_edge::pipeline::Progress<'_>| {
        if let Some(f) = progress {
            let (ptr, pw, ph) = match p.preview {
                Some(i) => (i.rgb.as_ptr(), i.width as c_int, i.height as c_int),
                None => (std::ptr::null(), 0, 0),
            };
            f(user, p.step as c_int, p.total as c_int, ptr, pw, ph);
        }
    };
    match pipe.txt2img(&req, &mut on_step, &flag) {
        Ok(out) => {
            std::ptr::copy_nonoverlapping(out.rgb.as_ptr(), rgb, out.rgb.len().min(rgb_len));
            Ok(LDM_OK)
        }
        Err(ldm_edge::Error::Cancelled) => Err((LDM_CANCELLED, "cancelled".into())),
        Err(x) => Err(e(x.to_string())),
    }
}
