//! Pipeline behaviour: progress, cancellation, guidance and size checks, on the default model.
use ldm_edge::backend::select;
use ldm_edge::model::Model;
use ldm_edge::pipeline::{Cancel, Pipeline, Txt2Img};
use ldm_edge::Error;
use std::path::Path;

fn model() -> Model {
    Model::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shapes-32.ldm")).unwrap()
}

#[test]
fn progress_is_reported_every_step_and_cancel_stops_the_run() {
    let m = model();
    let pipe = Pipeline::new(&m, select("cpu").unwrap());
    let mut req = Txt2Img::new(&m, "a blue star").unwrap();
    req.steps = 5;
    let mut seen = Vec::new();
    let out = pipe
        .txt2img(&req, &mut |p| seen.push((p.step, p.total)), &Cancel::new())
        .unwrap();
    assert_eq!(seen, (1..=5).map(|s| (s, 5)).collect::<Vec<_>>());
    assert_eq!(out.rgb.len(), out.width * out.height * 3);

    // Cancel from inside the progress callback: the run stops before the next step.
    let cancel = Cancel::new();
    let c = cancel.clone();
    let mut steps = 0;
    let r = pipe.txt2img(
        &req,
        &mut |p| {
            steps = p.step;
            if p.step == 2 {
                c.cancel()
            }
        },
        &cancel,
    );
    assert!(matches!(r, Err(Error::Cancelled)));
    assert_eq!(steps, 2);
}

#[test]
fn guidance_changes_the_image_and_one_means_conditional_only() {
    let m = model();
    let pipe = Pipeline::new(&m, select("cpu").unwrap());
    let mut req = Txt2Img::new(&m, "a green cross").unwrap();
    req.steps = 3;
    let run = |g: f32, neg: &str| {
        let mut r = req.clone();
        r.guidance = g;
        r.negative_prompt = neg.to_string();
        pipe.txt2img(&r, &mut |_| {}, &Cancel::new())
            .unwrap()
            .latents
            .data
    };
    // At guidance 1 the negative prompt has no influence: only the conditional pass runs.
    assert_eq!(run(1.0, ""), run(1.0, "a red square"));
    assert_ne!(run(1.0, ""), run(7.5, ""));
    assert_ne!(run(7.5, ""), run(7.5, "a red square"));
}

#[test]
fn bad_requests_are_errors() {
    let m = model();
    let pipe = Pipeline::new(&m, select("cpu").unwrap());
    let base = Txt2Img::new(&m, "a red circle").unwrap();
    let run = |f: &dyn Fn(&mut Txt2Img)| {
        let mut r = base.clone();
        f(&mut r);
        pipe.txt2img(&r, &mut |_| {}, &Cancel::new())
    };
    assert!(matches!(
        run(&|r| r.prompt = String::new()),
        Err(Error::Input(_))
    ));
    assert!(matches!(run(&|r| r.width = 33), Err(Error::Input(_))));
    assert!(matches!(
        run(&|r| r.guidance = f32::NAN),
        Err(Error::Input(_))
    ));
    assert!(matches!(run(&|r| r.steps = 5000), Err(Error::Input(_))));
    let wrong = ldm_edge::backend::Tensor::zeros(&[1, 4, 3, 3]);
    assert!(matches!(
        run(&|r| r.init_noise = Some(wrong.clone())),
        Err(Error::Input(_))
    ));
}

/// Counts the plans its inner backend prepares.
struct Counting {
    inner: Box<dyn ldm_edge::backend::Backend>,
    prepared: std::rc::Rc<std::cell::Cell<usize>>,
}

impl ldm_edge::backend::Backend for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn prepare(
        &self,
        graph: &ldm_edge::graph::Graph,
        weights: &dyn ldm_edge::backend::WeightSource,
    ) -> ldm_edge::Result<Box<dyn ldm_edge::backend::Executable>> {
        self.prepared.set(self.prepared.get() + 1);
        self.inner.prepare(graph, weights)
    }
}

#[test]
fn kept_plans_are_reused_across_requests_and_give_the_same_images() {
    let m = model();
    let prepared = std::rc::Rc::new(std::cell::Cell::new(0));
    let counting = Counting {
        inner: select("cpu").unwrap(),
        prepared: prepared.clone(),
    };
    let kept = Pipeline::new(&m, Box::new(counting))
        .with_plan_reuse(true)
        .with_memory_budget(None);
    let fresh = Pipeline::new(&m, select("cpu").unwrap());
    let mut req = Txt2Img::new(&m, "a blue star").unwrap();
    req.steps = 3;
    let mut other = req.clone();
    other.prompt = "a red circle above a green square".into();
    other.seed = 7;
    let mut unguided = req.clone();
    unguided.guidance = 1.0;
    // (request, plans it prepares): text encoder, UNet and decoder the first time; nothing for
    // another prompt and seed of the same size; a batch-1 text encoder and UNet without
    // guidance, whose decoder is the same; nothing for the first request again.
    for (r, new) in [(&req, 3), (&other, 0), (&unguided, 2), (&req, 0)] {
        let before = prepared.get();
        let a = kept.txt2img(r, &mut |_| {}, &Cancel::new()).unwrap();
        assert_eq!(prepared.get() - before, new, "{:?}", r.prompt);
        let b = fresh.txt2img(r, &mut |_| {}, &Cancel::new()).unwrap();
        assert_eq!(a.rgb, b.rgb);
        assert_eq!(a.latents.data, b.latents.data);
    }
    // A cancelled request returns its plans too.
    let cancel = Cancel::new();
    let c = cancel.clone();
    let r = kept.txt2img(&req, &mut |_| c.cancel(), &cancel);
    assert!(matches!(r, Err(Error::Cancelled)));
    let before = prepared.get();
    kept.txt2img(&req, &mut |_| {}, &Cancel::new()).unwrap();
    assert_eq!(prepared.get(), before);
}
