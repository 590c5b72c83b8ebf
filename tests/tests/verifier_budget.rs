//! The data plane stays within the verifier's limits with room to spare
//! for kernels whose verifier works differently from the one the tests run
//! on: the instructions it processes loading `xlb`, and the stack of every
//! program's deepest chain of BPF-to-BPF calls.
//!
//! The stack is read from the eBPF object itself. The verifier adds up the
//! frames of the calls on a chain, each rounded up: to 16 bytes since Linux
//! 6.9 (for JIT-compiled programs), to 32 bytes before, against 512 bytes.
//! A function's frame is the deepest slot it addresses below the frame
//! pointer (`r10`); its calls are the `call` instructions with
//! `src_reg = BPF_PSEUDO_CALL`, to a function of its own section
//! (pc-relative) or of `.text` (relocated against the section, the target in
//! the immediate, or against the function itself, such as `memcpy`), and the functions whose address it loads for a helper to
//! call back (`bpf_loop`), which the verifier counts the same way. The verifier's own message names no function ("combined
//! stack size of 4 calls is 544"); this test prints each program's chain.

use std::collections::{BTreeMap, HashMap};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SymbolKind};
use xlb::dataplane::Dataplane;
use xlb_tests::require_root;

const MAX_BPF_STACK: u64 = 512;
/// How each frame is rounded, by kernel: 16 bytes since 6.9 (JIT-compiled
/// programs), 32 before, back to 6.6, the oldest xlb supports
/// (docs/operations.md). A chain must fit by both rules.
const FRAME_ROUNDINGS: [(u64, &str); 2] = [(16, "Linux 6.9 and later"), (32, "Linux 6.6 to 6.8")];
/// The verifier's limit is 1 000 000 processed instructions; 80 % of it
/// leaves room for verifiers that prune less.
const MAX_VERIFIED_INSNS: u32 = 800_000;

const INSN: u64 = 8;
const BPF_CALL: u8 = 0x85;
const BPF_PSEUDO_CALL: u8 = 1;
/// `r = imm64`: a map's or a function's address once relocated.
const LD_IMM64: u8 = 0x18;
const FRAME_POINTER: u8 = 10;

/// A function of the object: its frame and whom it calls.
struct Function {
    section: String,
    frame: u64,
    /// (section, offset in bytes) of each function it calls.
    calls: Vec<(String, u64)>,
}

/// Every function of the object's executable sections, keyed by (section,
/// offset in bytes).
fn functions(elf: &object::File<'_>) -> BTreeMap<(String, u64), (String, Function)> {
    let mut starts: BTreeMap<(String, u64), (String, u64)> = BTreeMap::new();
    for symbol in elf.symbols() {
        let (Some(index), SymbolKind::Text) = (symbol.section_index(), symbol.kind()) else {
            continue;
        };
        let section = elf.section_by_index(index).unwrap();
        let name = symbol.name().unwrap_or("?").to_owned();
        starts.insert(
            (section.name().unwrap().to_owned(), symbol.address()),
            (name, symbol.size()),
        );
    }
    let mut out = BTreeMap::new();
    for section in elf.sections() {
        let Ok(section_name) = section.name() else {
            continue;
        };
        if section.kind() != object::SectionKind::Text {
            continue;
        }
        let code = section.data().unwrap();
        // Instructions relocated against a symbol: where, and the symbol's
        // section, its address, and whether that section holds code.
        let relocated: HashMap<u64, (String, u64, bool)> = section
            .relocations()
            .filter_map(|(at, reloc)| match reloc.target() {
                RelocationTarget::Symbol(i) => {
                    let symbol = elf.symbol_by_index(i).ok()?;
                    let target = elf.section_by_index(symbol.section_index()?).ok()?;
                    Some((
                        at,
                        (
                            target.name().ok()?.to_owned(),
                            symbol.address(),
                            target.kind() == object::SectionKind::Text,
                        ),
                    ))
                }
                _ => None,
            })
            .collect();
        for ((sec, start), (name, size)) in
            starts.range((section_name.to_owned(), 0)..=(section_name.to_owned(), u64::MAX))
        {
            let end = if *size > 0 {
                start + size
            } else {
                code.len() as u64
            };
            let mut function = Function {
                section: sec.clone(),
                frame: 0,
                calls: Vec::new(),
            };
            let mut at = *start;
            while at + INSN <= end.min(code.len() as u64) {
                let insn = &code[at as usize..(at + INSN) as usize];
                let (op, dst, src) = (insn[0], insn[1] & 0x0f, insn[1] >> 4);
                let off = i16::from_le_bytes([insn[2], insn[3]]);
                let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
                let class = op & 0x07;
                // LDX reads through src; ST and STX write through dst.
                let base = if class == 0x01 { src } else { dst };
                if matches!(class, 0x01..=0x03) && base == FRAME_POINTER && off < 0 {
                    function.frame = function.frame.max(u64::from(off.unsigned_abs()));
                }
                if op == BPF_CALL && src == BPF_PSEUDO_CALL {
                    let target = match relocated.get(&at) {
                        Some((target_section, address, _)) => (
                            target_section.clone(),
                            address.wrapping_add(((i64::from(imm) + 1) * INSN as i64) as u64),
                        ),
                        None => (
                            sec.clone(),
                            (at as i64 + (i64::from(imm) + 1) * INSN as i64) as u64,
                        ),
                    };
                    function.calls.push(target);
                }
                // A function's address loaded for a helper to call back
                // (`bpf_loop`): the verifier counts the callback's frame
                // on top of the function that loads it.
                if op == LD_IMM64
                    && let Some((target_section, address, true)) = relocated.get(&at)
                {
                    let offset = address + u64::from(imm as u32);
                    function.calls.push((target_section.clone(), offset));
                }
                // A 64-bit immediate load takes two slots.
                at += if op == LD_IMM64 { 2 * INSN } else { INSN };
            }
            out.insert((sec.clone(), *start), (name.clone(), function));
        }
    }
    out
}

/// The deepest chain from `at`: its total stack and the names on it.
fn deepest(
    functions: &BTreeMap<(String, u64), (String, Function)>,
    at: &(String, u64),
    rounding: u64,
    depth: usize,
) -> (u64, Vec<String>) {
    assert!(
        depth < 8,
        "calls nested past the verifier's 8 frames at {at:?}"
    );
    let (name, function) = functions
        .get(at)
        .unwrap_or_else(|| panic!("a call to {at:?}, where no function starts"));
    // The verifier counts an empty frame as one byte, rounded up.
    let own = function.frame.max(1).div_ceil(rounding) * rounding;
    let (below, mut chain) = function
        .calls
        .iter()
        .map(|callee| deepest(functions, callee, rounding, depth + 1))
        .max_by_key(|(bytes, _)| *bytes)
        .unwrap_or_default();
    chain.insert(0, format!("{name} ({} bytes)", function.frame));
    (own + below, chain)
}

#[test]
fn loading_xlb_takes_the_verifier_well_under_its_limit() {
    require_root();
    let mut dataplane = Dataplane::load().expect("load the data plane");
    let info = dataplane.program().unwrap().info().unwrap();
    let verified = info
        .verified_instruction_count()
        .expect("the kernel reports the instructions it verified");
    eprintln!("xlb: the verifier processed {verified} instructions");
    assert!(
        verified < MAX_VERIFIED_INSNS,
        "the verifier processed {verified} instructions loading xlb, over \
         {MAX_VERIFIED_INSNS} (its limit is 1 000 000)"
    );
}

#[test]
fn every_programs_calls_fit_the_verifiers_stack() {
    let elf = object::File::parse(xlb::ebpf_object()).expect("parse the eBPF object");
    let functions = functions(&elf);
    let programs: Vec<&(String, u64)> = functions
        .iter()
        .filter(|(_, (_, f))| f.section != ".text")
        .map(|(at, _)| at)
        .collect();
    assert!(
        programs.len() >= 3,
        "expected the XDP, tc and cgroup programs"
    );
    let mut failures = Vec::new();
    for (rounding, kernels) in FRAME_ROUNDINGS {
        eprintln!("{kernels}, frames rounded to {rounding} bytes:");
        for at in &programs {
            let (bytes, chain) = deepest(&functions, at, rounding, 0);
            eprintln!("{bytes:>4} bytes: {}", chain.join(" -> "));
            if bytes > MAX_BPF_STACK {
                failures.push(format!("{kernels}: {bytes} bytes: {}", chain.join(" -> ")));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "call chains over {MAX_BPF_STACK} bytes of stack:\n{}",
        failures.join("\n")
    );
}
