//! The library behind the `cxr-msn` tool: everything that touches files, threads and
//! datasets (the model crate `cxr_msn` does none of that). The binary in `main.rs` is a thin
//! command-line layer over it.

pub mod baseline_parts;
pub mod baselines;
pub mod bench;
pub mod cli_values;
pub mod contact_sheet;
pub mod cpu_parallel;
pub mod data;
pub mod device;
pub mod downstream;
pub mod ehr_command;
pub mod embed;
pub mod evaluate;
pub mod export;
pub mod features;
pub mod files;
pub mod finetune;
pub mod finite;
pub mod fused_adamw;
pub mod images;
pub mod interrupt;
pub mod loader;
pub mod main_job;
pub mod metrics;
pub mod model_files;
pub mod msn_parts;
pub mod plot;
pub mod pretrain;
pub mod probe;
pub mod progress;
pub mod report;
pub mod run_files;
pub mod run_lock;
pub mod schedule;
pub mod source;
pub mod split_backward;
pub mod synthetic;
pub mod weights;
