//! Bounds-checked access to the frame's bytes. Every read and write of
//! packet data goes through here, so the verifier sees each one checked.
//!
//! The XDP program and the tc egress program (`local`) read frames the same
//! way, through [`Frame`]: direct packet access between the context's
//! `data` and `data_end`. Each program gets its own copy of the generic
//! code, so the XDP program's is what it was.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};

/// A program context whose packet bytes can be read directly.
pub trait Frame {
    /// The first and one-past-last byte addresses of the bytes the program
    /// can read directly.
    fn bounds(&self) -> (usize, usize);

    /// The frame's whole length: for XDP the bytes between the bounds; for
    /// tc also what lies in the skb's fragments (a TSO super-packet the
    /// host's stack sends carries its payload there), so length fields are
    /// checked against the packet, not its linear head.
    #[inline(always)]
    fn len(&self) -> usize {
        let (start, end) = self.bounds();
        end - start
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        // SAFETY: `self.ctx` is the kernel's `xdp_md` for this run. The loads
        // are volatile so LLVM cannot hoist them into a caller and pass the
        // values as arguments: their zero-extension there is pointer
        // arithmetic the verifier refuses.
        unsafe {
            let md = self.ctx;
            (
                core::ptr::read_volatile(&raw const (*md).data) as usize,
                core::ptr::read_volatile(&raw const (*md).data_end) as usize,
            )
        }
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        // SAFETY: `self.skb.skb` is the kernel's `__sk_buff` for this run;
        // volatile for the reason given for XDP above.
        unsafe {
            let skb = self.skb.skb;
            (
                core::ptr::read_volatile(&raw const (*skb).data) as usize,
                core::ptr::read_volatile(&raw const (*skb).data_end) as usize,
            )
        }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.skb.len() as usize
    }
}

/// Returns a pointer to a `T` at `offset` if the whole `T` lies inside the
/// frame.
#[inline(always)]
pub fn ptr_at<T, C: Frame>(ctx: &C, offset: usize) -> Option<*mut T> {
    let (start, end) = ctx.bounds();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The frame's length in bytes.
#[inline(always)]
pub fn len<C: Frame>(ctx: &C) -> usize {
    ctx.len()
}

/// Reads a `T` at `offset`, bounds-checked.
#[inline(always)]
pub fn read_at<T: Copy, C: Frame>(ctx: &C, offset: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that the `T` lies inside the frame; packet
    // data has no alignment guarantee, hence the unaligned read.
    ptr_at::<T, C>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// Writes `value` at `offset`, bounds-checked.
#[inline(always)]
pub fn write_at<T>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    // SAFETY: `ptr_at` checked that the `T` lies inside the frame, which
    // this program may modify; the write is unaligned like the data.
    ptr_at::<T, XdpContext>(ctx, offset).map(|p| unsafe { p.write_unaligned(value) })
}
