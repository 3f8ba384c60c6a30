pub struct CpuBackend;
