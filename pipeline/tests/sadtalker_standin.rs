//! Stand-in SadTalker checkpoints (`sadtalker::standin`): written with every key, shape and
//! dtype of the official files (checked against the fixtures' `official_layout.json`), readable
//! by the strict loaders, and with finite weights that keep a forward pass finite.

use crate::sadtalker_common::{fixture_dir, official_layout};
use std::collections::BTreeMap;
use vipavatar_pipeline::sadtalker::paths::{CHECKPOINT_256, MAPPING_CROP, MAPPING_FULL};
use vipavatar_pipeline::sadtalker::standin::{write_stand_ins, MARKER};
use vipavatar_pipeline::sadtalker::weights::SafetensorsIndex;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vipavatar-standin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn stand_ins_have_the_official_layout_and_load() {
    let Some(fixtures) = fixture_dir() else { return };
    let dir = scratch("layout");
    let written = write_stand_ins(&dir, 7).expect("stand-ins written");
    assert!(dir.join(MARKER).is_file());
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".partial")));

    // Every key of the main checkpoint, with its shape and dtype, is the official one.
    let official = official_layout(&fixtures, CHECKPOINT_256);
    let index = SafetensorsIndex::open(&dir.join(CHECKPOINT_256)).expect("header");
    let ours: BTreeMap<String, (Vec<i64>, String)> =
        index.entries().iter().map(|(k, e)| (k.clone(), (e.shape.clone(), format!("{:?}", e.dtype)))).collect();
    let missing: Vec<&String> = official.keys().filter(|k| !ours.contains_key(*k)).take(5).collect();
    let extra: Vec<&String> = ours.keys().filter(|k| !official.contains_key(*k)).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
    for (key, want) in &official {
        assert_eq!(&ours[key], want, "`{key}`");
    }
    // The mapping pickles hold `mapping.<official key>` at the official shapes.
    for file in [MAPPING_CROP, MAPPING_FULL] {
        let official = official_layout(&fixtures, file);
        let loaded = vipavatar_pipeline::torch_pickle::load(&dir.join(file)).expect("mapping pickle");
        let ours: BTreeMap<String, Vec<i64>> =
            loaded.iter().map(|(k, t)| (k.strip_prefix("mapping.").unwrap_or(k).to_string(), t.size())).collect();
        let want: BTreeMap<String, Vec<i64>> = official.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect();
        assert_eq!(ours, want, "{file}");
        assert!(loaded.iter().all(|(_, t)| t.isfinite().all().int64_value(&[]) == 1), "{file}: finite");
    }
    assert_eq!(written.tensors, official.len() + 2 * official_layout(&fixtures, MAPPING_CROP).len());

    // The strict engine loader accepts them (every network, the 256 px renderer).
    let engine = vipavatar_pipeline::sadtalker::engine::SadTalkerEngine::load(&dir, tch::Device::Cpu);
    let engine = engine.unwrap_or_else(|e| panic!("{e}"));
    crate::sadtalker_stream::check_engine_motion(&engine);
    let _ = std::fs::remove_dir_all(&dir);
}
