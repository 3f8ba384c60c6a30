//! Kernel variants that known drivers get wrong, and the override that disables any variant.
//!
//! Each rule names the driver (the `VkDriverId`, which tells MoltenVK or Mesa's ANV from the
//! vendor's own driver on the same GPU), optionally a vendor, and cites the public report of the
//! bug. A disabled variant falls back to the portable kernel of the same op, so a rule costs
//! speed, never a result. `LDM_VULKAN_DISABLE=flash,f16,dot,sg` (or `all`) disables variants by
//! hand on any device: the first thing to try when a new driver draws a wrong image.
use std::fmt;

/// A kernel variant chosen at start-up from the device's features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Norm reductions through `subgroupAdd` (else a workgroup-memory tree).
    Subgroup,
    /// Query-blocked flash attention (else one workgroup per query row).
    Flash,
    /// conv/linear tiles in f16 with f16 products, summed into f32 (else f32 throughout).
    F16Math,
    /// q8 linear through packed int8 dot products (else dequantized f32 products).
    Int8Dot,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Subgroup,
        Variant::Flash,
        Variant::F16Math,
        Variant::Int8Dot,
    ];

    /// The name `LDM_VULKAN_DISABLE` takes.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Subgroup => "sg",
            Variant::Flash => "flash",
            Variant::F16Math => "f16",
            Variant::Int8Dot => "dot",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What identifies a driver: `VkPhysicalDeviceProperties::vendorID` and the `VkDriverId`
/// (vulkano's `DriverId` name, e.g. `MoltenVK`), which Vulkan 1.2 drivers report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverIdent {
    pub vendor_id: u32,
    pub driver: Option<String>,
}

pub const VENDOR_AMD: u32 = 0x1002;
pub const VENDOR_INTEL: u32 = 0x8086;
pub const VENDOR_IMAGINATION: u32 = 0x1010;

struct Rule {
    driver: &'static str,
    vendor: Option<u32>,
    disables: &'static [Variant],
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        driver: "MoltenVK",
        vendor: Some(VENDOR_AMD),
        disables: &[Variant::Subgroup],
        why: "subgroup arithmetic returns wrong sums on AMD GPUs through MoltenVK \
              (llama.cpp #15846, worked around in llama.cpp #15886)",
    },
    Rule {
        driver: "MoltenVK",
        vendor: Some(VENDOR_INTEL),
        disables: &[Variant::Subgroup],
        why: "Metal simd_reduction, behind subgroup arithmetic, is wrong on Intel Gen9 \
              through MoltenVK (MoltenVK #2757)",
    },
    Rule {
        driver: "IntelOpenSourceMesa",
        vendor: None,
        disables: &[Variant::F16Math],
        why: "ANV miscompiles f16 arithmetic in matmul shaders (llama.cpp #17106, \
              worked around in llama.cpp #18814)",
    },
    Rule {
        driver: "QualcommProprietary",
        vendor: None,
        disables: &[Variant::Int8Dot],
        why: "Adreno's driver advertises integer dot products whose q4/q8 matmul results are \
              wrong (ggml #1601)",
    },
    Rule {
        driver: "ImaginationProprietary",
        vendor: Some(VENDOR_IMAGINATION),
        disables: &[Variant::F16Math, Variant::Int8Dot],
        why: "PowerVR f16 arithmetic has large errors (ncnn marks fp16 arithmetic \"may produce \
              large error\"), and its integer-dot path draws garbage (llama.cpp #28502)",
    },
];

/// The variants this driver must not run, each with the reason.
pub fn known_bugs(dev: &DriverIdent) -> Vec<(Variant, &'static str)> {
    let mut out = Vec::new();
    for r in RULES {
        let driver = dev.driver.as_deref() == Some(r.driver);
        let vendor = r.vendor.is_none_or(|v| v == dev.vendor_id);
        if driver && vendor {
            out.extend(r.disables.iter().map(|&v| (v, r.why)));
        }
    }
    out
}

/// Parses `LDM_VULKAN_DISABLE`: comma-separated variant names, or `all`. An unknown name is an
/// error that lists the valid ones (a typo must not leave a variant on silently).
pub fn parse_disable(spec: &str) -> std::result::Result<Vec<Variant>, String> {
    let mut out = Vec::new();
    for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if word == "all" {
            return Ok(Variant::ALL.to_vec());
        }
        match Variant::ALL.iter().find(|v| v.name() == word) {
            Some(&v) => out.push(v),
            None => {
                let names: Vec<_> = Variant::ALL.iter().map(|v| v.name()).collect();
                return Err(format!(
                    "LDM_VULKAN_DISABLE: unknown variant `{word}` (known: {}, all)",
                    names.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(vendor_id: u32, driver: &str) -> DriverIdent {
        DriverIdent {
            vendor_id,
            driver: Some(driver.into()),
        }
    }

    #[test]
    fn rules_match_driver_and_vendor() {
        let amd_mvk = known_bugs(&dev(VENDOR_AMD, "MoltenVK"));
        assert_eq!(amd_mvk.len(), 1);
        assert_eq!(amd_mvk[0].0, Variant::Subgroup);
        // Apple's own GPUs through MoltenVK are not in the reports.
        assert!(known_bugs(&dev(0x106b, "MoltenVK")).is_empty());
        let anv = known_bugs(&dev(VENDOR_INTEL, "IntelOpenSourceMesa"));
        assert_eq!(
            anv.iter().map(|b| b.0).collect::<Vec<_>>(),
            [Variant::F16Math]
        );
        let pvr = known_bugs(&dev(VENDOR_IMAGINATION, "ImaginationProprietary"));
        assert_eq!(pvr.len(), 2);
        assert!(known_bugs(&dev(0x5143, "MesaTurnip")).is_empty());
        assert!(known_bugs(&dev(0x10005, "MesaLLVMpipe")).is_empty());
        let no_id = DriverIdent {
            vendor_id: VENDOR_AMD,
            driver: None,
        };
        assert!(known_bugs(&no_id).is_empty());
    }

    #[test]
    fn disable_override_parses_and_rejects_typos() {
        assert_eq!(parse_disable(""), Ok(vec![]));
        assert_eq!(
            parse_disable("flash, f16"),
            Ok(vec![Variant::Flash, Variant::F16Math])
        );
        assert_eq!(parse_disable("all"), Ok(Variant::ALL.to_vec()));
        let e = parse_disable("flsh").unwrap_err();
        assert!(e.contains("`flsh`") && e.contains("flash"), "{e}");
    }
}
