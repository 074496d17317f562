//! Private fine-tuning: only the heads move, each patient's result depends on that
//! patient alone, and training on the heads lowers the loss.

use tessera_core::LocalTrainer;
use tessera_eval::BBox;
use tessera_train::{DetectorTrainer, Example, FineTuner, Trainable, is_head};

mod common;
use common::{SIZE, no_augmentation, round as cfg, tiny};

fn examples(count: usize, shift: usize) -> Vec<Example> {
    (0..count)
        .map(|i| {
            let mut image = vec![0.1f32; 3 * SIZE * SIZE];
            let mut lesion = vec![false; SIZE * SIZE];
            let (x0, y0, side) = (8 + (i * 7 + shift) % 30, 10 + (i * 11) % 30, 8 + i % 5);
            for y in y0..y0 + side {
                for x in x0..x0 + side {
                    lesion[y * SIZE + x] = true;
                    for c in 0..3 {
                        image[c * SIZE * SIZE + y * SIZE + x] = 0.7;
                    }
                }
            }
            let b = BBox::new(x0 as f32, y0 as f32, (x0 + side) as f32, (y0 + side) as f32);
            Example {
                image,
                boxes: vec![b],
                lesion,
            }
        })
        .collect()
}

/// A "public" model: the detector briefly trained on other slices.
fn public() -> Vec<f32> {
    let mut t = DetectorTrainer::native(&tiny(), examples(6, 3), no_augmentation(), 7).unwrap();
    let start = t.parameters();
    t.train(&start, &cfg(5, 1)).unwrap().parameters
}

#[test]
fn only_the_heads_are_private_and_the_backbone_stays_public() {
    let public = public();
    let patients = vec![examples(3, 0), examples(2, 5)];
    let mut ft = FineTuner::new(&tiny(), &public, patients, Trainable::Heads, 1).unwrap();
    assert!(ft.layout().entries().iter().all(|e| is_head(&e.name)));
    assert!(
        ft.layout().len() < public.len() / 2,
        "{} of {}",
        ft.layout().len(),
        public.len()
    );
    let start = ft.parameters();
    let update = ft.train(&start, &cfg(20, 2)).unwrap();
    assert_ne!(update.parameters, start);
    let full = ft.full_model(&update.parameters).unwrap();
    let untouched = ft.full_model(&start).unwrap();
    assert_eq!(
        untouched, public,
        "the frozen part and the start heads give back the public model"
    );
    let changed = full.iter().zip(&public).filter(|(a, b)| a != b).count();
    assert!(changed > 0 && changed <= ft.layout().len());
}

/// The privacy argument clips each patient's change on its own: a patient's result must
/// not depend on which other patients were sampled.
#[test]
fn each_patient_is_trained_on_that_patient_alone() {
    let public = public();
    let patients = vec![examples(3, 0), examples(2, 5), examples(4, 9)];
    let mut ft = FineTuner::new(&tiny(), &public, patients, Trainable::Heads, 1).unwrap();
    let start = ft.parameters();
    let c = cfg(4, 11);
    let alone = ft.train_patients(&start, &c, &[1]).unwrap().unwrap();
    let with_others = ft.train_patients(&start, &c, &[0, 1, 2]).unwrap().unwrap();
    assert_eq!(alone[0], with_others[1]);
    assert_ne!(with_others[0], with_others[1]);
    assert!(with_others.iter().all(|p| *p != start));
    // The trainer's own heads are back at the start afterwards.
    assert_eq!(ft.parameters(), start);
}

#[test]
fn training_the_heads_lowers_the_loss() {
    let public = public();
    let mut ft =
        FineTuner::new(&tiny(), &public, vec![examples(4, 0)], Trainable::Heads, 1).unwrap();
    let start = ft.parameters();
    let first = ft.train(&start, &cfg(5, 3)).unwrap();
    let mut params = first.parameters.clone();
    let mut last = first.mean_loss;
    for round in 0..6 {
        let u = ft.train(&params, &cfg(5, 4 + round)).unwrap();
        params = u.parameters;
        last = u.mean_loss;
    }
    assert!(last < first.mean_loss * 0.8, "{} → {last}", first.mean_loss);
}

#[test]
fn the_output_adapter_is_a_few_hundred_parameters_and_learns() {
    let public = public();
    let mut ft = FineTuner::new(
        &tiny(),
        &public,
        vec![examples(4, 0)],
        Trainable::HeadOutputs,
        1,
    )
    .unwrap();
    // 16 channels → 1 + 4 + 1 outputs, with biases.
    assert_eq!(ft.layout().len(), 16 * 6 + 6);
    assert!(
        ft.layout()
            .entries()
            .iter()
            .all(|e| e.name.contains(".out."))
    );
    let start = ft.parameters();
    let u = ft.train(&start, &cfg(10, 1)).unwrap();
    assert_ne!(u.parameters, start);
}
