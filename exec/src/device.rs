//! Where model work runs. CPU always works; CUDA only in builds with the `cuda` feature.

use candle_core::Device;

use crate::error::ModelError;

/// A compute device a model can be placed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDevice {
    /// The host CPU.
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl ComputeDevice {
    /// The candle device, or a clear error when CUDA is asked for without CUDA support.
    pub fn candle(self) -> Result<Device, ModelError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            #[cfg(feature = "cuda")]
            Self::Cuda(ordinal) => Ok(Device::new_cuda(ordinal)?),
            #[cfg(not(feature = "cuda"))]
            Self::Cuda(_) => Err(ModelError::NoGpuSupport),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_always_works() {
        assert!(ComputeDevice::Cpu.candle().is_ok());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_so() {
        let err = ComputeDevice::Cuda(0).candle().unwrap_err().to_string();
        assert!(err.contains("built without CUDA"), "{err}");
    }
}
