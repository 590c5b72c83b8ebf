//! Bounds-checked access to the frame's bytes. Every read and write of
//! packet data goes through here, so the verifier sees each one checked.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

/// Returns a pointer to a `T` at `offset` if the whole `T` lies inside the
/// frame.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let (start, end) = bounds(ctx);
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The frame's first and one-past-last byte addresses.
#[inline(always)]
fn bounds(ctx: &XdpContext) -> (usize, usize) {
    // SAFETY: `ctx.ctx` is the kernel's `xdp_md` for this run. The loads are
    // volatile so LLVM cannot hoist them into a caller and pass the values
    // as arguments: their zero-extension there is pointer arithmetic the
    // verifier refuses.
    unsafe {
        let md = ctx.ctx;
        (
            core::ptr::read_volatile(&raw const (*md).data) as usize,
            core::ptr::read_volatile(&raw const (*md).data_end) as usize,
        )
    }
}

/// The frame's length in bytes.
#[inline(always)]
pub fn len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// Reads a `T` at `offset`, bounds-checked.
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that the `T` lies inside the frame; packet
    // data has no alignment guarantee, hence the unaligned read.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// Writes `value` at `offset`, bounds-checked.
#[inline(always)]
pub fn write_at<T>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    // SAFETY: `ptr_at` checked that the `T` lies inside the frame, which
    // this program may modify; the write is unaligned like the data.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.write_unaligned(value) })
}
