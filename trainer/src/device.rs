//! Choosing where the model runs: a GPU through wgpu (Vulkan, Metal, DX12) when a hardware
//! adapter exists, Burn's flex CPU backend otherwise or on request. The adapter is named,
//! and a software adapter (such as Mesa's llvmpipe) never passes for a GPU.

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::ValueEnum;

/// The `--device` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// A hardware GPU when there is one, else the CPU.
    Auto,
    /// The CPU (flex backend).
    Cpu,
    /// The wgpu adapter, even a software one (for tests); an error when there is none.
    Gpu,
    /// Burn's ndarray CPU backend (deprecated upstream), with Burn's stock operations: for
    /// benchmarks (the `ndarray` feature).
    #[cfg(feature = "ndarray")]
    Ndarray,
}

/// The device picked, and what it is.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// Where tensors live (without autodiff).
    pub device: Device,
    /// For the log: the backend and the adapter's name and kind.
    pub description: String,
}

fn cpu(reason: &str) -> Chosen {
    Chosen {
        device: Device::flex(),
        description: format!("CPU (flex backend){reason}"),
    }
}

/// Picks the device the flag asks for.
pub fn choose(arg: DeviceArg) -> Result<Chosen> {
    if arg == DeviceArg::Cpu {
        return Ok(cpu(""));
    }
    #[cfg(feature = "ndarray")]
    if arg == DeviceArg::Ndarray {
        // Deprecated upstream, and measured for that reason: what the backend Burn leaves
        // behind did with this model (BENCHMARKS.md).
        #[allow(deprecated)]
        return Ok(Chosen {
            device: Device::ndarray(),
            description: "CPU (ndarray backend, Burn's stock operations)".into(),
        });
    }
    match gpu() {
        Ok((device, name, software)) => {
            let kind = if software {
                "software adapter"
            } else {
                "hardware adapter"
            };
            if software && arg == DeviceArg::Auto {
                return Ok(cpu(&format!(
                    "; the only wgpu adapter, {name}, is a {kind} and slower than the CPU"
                )));
            }
            // Which wgpu backend this build has, so that a benchmark's figures say it.
            let build = if cfg!(feature = "gpu-fast") {
                "Burn's fusion and autotune"
            } else {
                "plain wgpu: no fusion, no autotune"
            };
            Ok(Chosen {
                device,
                description: format!("GPU through wgpu: {name} ({kind}), {build}"),
            })
        }
        Err(reason) if arg == DeviceArg::Auto => Ok(cpu(&format!("; no GPU: {reason}"))),
        Err(reason) => bail!("--device gpu: {reason}"),
    }
}

/// The wgpu adapter, probed once per process: a second initialisation of the runtime
/// fails ("already initialized"), so every command of `demo` reuses the first answer.
#[cfg(feature = "gpu")]
fn gpu() -> std::result::Result<(Device, String, bool), String> {
    use std::sync::OnceLock;
    static PROBED: OnceLock<std::result::Result<(Device, String, bool), String>> = OnceLock::new();
    PROBED
        .get_or_init(|| {
            use burn::tensor::wgpu::WgpuBackend;
            use burn::tensor::wgpu::wgpu::DeviceType;
            // Vulkan, Metal or DX12 only: Burn's automatic choice also falls back to OpenGL,
            // which nothing here is tested on (and whose EGL probe is one more source of
            // libwayland's "XDG_RUNTIME_DIR is invalid" lines on a headless Linux machine;
            // Mesa's Vulkan device-select layer prints the others, and `quiet_vulkan.rs`
            // turns it off there).
            let apis: &[WgpuBackend] = if cfg!(target_os = "macos") {
                &[WgpuBackend::Metal]
            } else if cfg!(windows) {
                &[WgpuBackend::Vulkan, WgpuBackend::Dx12]
            } else {
                &[WgpuBackend::Vulkan]
            };
            let mut failures = Vec::new();
            let mut found = None;
            for api in apis {
                match Device::wgpu_options().graphics_api(*api).init_with_setup() {
                    Ok(ok) => {
                        found = Some(ok);
                        break;
                    }
                    Err(e) => failures.push(format!("{api:?}: {e}")),
                }
            }
            let (device, setup) =
                found.ok_or_else(|| format!("no wgpu adapter ({})", failures.join("; ")))?;
            let info = setup.adapter.get_info();
            let software = info.device_type == DeviceType::Cpu;
            Ok((
                device,
                format!("{} via {:?}", info.name, info.backend),
                software,
            ))
        })
        .clone()
}

#[cfg(not(feature = "gpu"))]
fn gpu() -> std::result::Result<(Device, String, bool), String> {
    Err("this build has no GPU support (build with the `gpu` feature)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_twice_in_one_process_gives_the_same_answer() {
        // `demo` chooses once per command; the wgpu runtime can only be set up once.
        let first = choose(DeviceArg::Auto).unwrap().description;
        let second = choose(DeviceArg::Auto).unwrap().description;
        assert_eq!(first, second);
        assert_eq!(
            choose(DeviceArg::Cpu).unwrap().description,
            "CPU (flex backend)"
        );
    }
}
