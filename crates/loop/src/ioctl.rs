//! The loop ioctls, in one place (`linux/loop.h`).
//!
//! Every call here is `unsafe` because the kernel reads or writes through the argument; each
//! one states why the argument matches what the kernel expects for that request.
//!
//! References: [loop(4)](https://man7.org/linux/man-pages/man4/loop.4.html).

#![allow(unsafe_code)] // the only place in this crate: raw ioctls with kernel-defined layouts

use std::os::fd::AsFd;

use rustix::io::Errno;
use rustix::ioctl::{Getter, IntegerSetter, Ioctl, IoctlOutput, NoArg, Opcode, Setter, ioctl};

/// `LO_NAME_SIZE` from `linux/loop.h`.
pub const LO_NAME_SIZE: usize = 64;
/// `LO_KEY_SIZE` from `linux/loop.h`.
const LO_KEY_SIZE: usize = 32;

/// `LO_FLAGS_READ_ONLY`.
pub const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_FLAGS_AUTOCLEAR`.
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `LO_FLAGS_PARTSCAN`.
pub const LO_FLAGS_PARTSCAN: u32 = 8;
/// `LO_FLAGS_DIRECT_IO`.
pub const LO_FLAGS_DIRECT_IO: u32 = 16;

const LOOP_SET_FD: Opcode = 0x4C00;
const LOOP_CLR_FD: Opcode = 0x4C01;
const LOOP_SET_STATUS64: Opcode = 0x4C04;
const LOOP_GET_STATUS64: Opcode = 0x4C05;
const LOOP_SET_DIRECT_IO: Opcode = 0x4C08;
const LOOP_SET_BLOCK_SIZE: Opcode = 0x4C09;
const LOOP_CONFIGURE: Opcode = 0x4C0A;
const LOOP_CTL_GET_FREE: Opcode = 0x4C82;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LoopInfo64 {
    /// `lo_device` (read-only): device number of the backing file's filesystem.
    pub lo_device: u64,
    /// `lo_inode` (read-only): inode of the backing file.
    pub lo_inode: u64,
    /// `lo_rdevice` (read-only).
    pub lo_rdevice: u64,
    /// `lo_offset`: start of the mapped range in the backing file, bytes.
    pub lo_offset: u64,
    /// `lo_sizelimit`: length of the mapped range, bytes; 0 = to the end.
    pub lo_sizelimit: u64,
    /// `lo_number` (read-only).
    pub lo_number: u32,
    /// `lo_encrypt_type` (obsolete).
    pub lo_encrypt_type: u32,
    /// `lo_encrypt_key_size` (obsolete).
    pub lo_encrypt_key_size: u32,
    /// `lo_flags`: `LO_FLAGS_*`.
    pub lo_flags: u32,
    /// `lo_file_name`: the backing file's name, truncated, NUL-padded.
    pub lo_file_name: [u8; LO_NAME_SIZE],
    /// `lo_crypt_name` (obsolete).
    pub lo_crypt_name: [u8; LO_NAME_SIZE],
    /// `lo_encrypt_key` (obsolete).
    pub lo_encrypt_key: [u8; LO_KEY_SIZE],
    /// `lo_init` (obsolete).
    pub lo_init: [u64; 2],
}

impl Default for LoopInfo64 {
    fn default() -> Self {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

/// `struct loop_config` (Linux 5.8+).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopConfig {
    /// `fd`: the backing file.
    pub fd: u32,
    /// `block_size`: logical block size, 0 = default (512).
    pub block_size: u32,
    /// `info`: offset, sizelimit, flags, file name.
    pub info: LoopInfo64,
    /// `__reserved`.
    pub reserved: [u64; 8],
}

/// `LOOP_CTL_GET_FREE` returns the device number as the ioctl's return value.
struct GetFree;

// SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number (or an errno).
unsafe impl Ioctl for GetFree {
    type Output = u32;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> Opcode {
        LOOP_CTL_GET_FREE
    }
    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        core::ptr::null_mut()
    }
    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _: *mut core::ffi::c_void,
    ) -> rustix::io::Result<u32> {
        u32::try_from(out).map_err(|_| Errno::INVAL)
    }
}

/// `ioctl(loop_control_fd, LOOP_CTL_GET_FREE)`: the number of a free loop device (the kernel
/// creates one when none is free).
#[doc(alias = "LOOP_CTL_GET_FREE")]
pub fn ctl_get_free(control: impl AsFd) -> Result<u32, Errno> {
    // SAFETY: GetFree passes no pointer; the request is the loop-control one.
    unsafe { ioctl(control, GetFree) }
}

/// `ioctl(loop_fd, LOOP_CONFIGURE, &config)`: bind a backing file and set everything at once.
#[doc(alias = "LOOP_CONFIGURE")]
pub fn configure(dev: impl AsFd, config: &LoopConfig) -> Result<(), Errno> {
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `LoopConfig` mirrors
    // (repr(C), size checked by a unit test); the value lives across the call.
    unsafe { ioctl(dev, Setter::<LOOP_CONFIGURE, LoopConfig>::new(*config)) }
}

/// `ioctl(loop_fd, LOOP_SET_FD, backing_fd)`: bind a backing file (pre-5.8 path).
#[doc(alias = "LOOP_SET_FD")]
pub fn set_fd(dev: impl AsFd, backing: i32) -> Result<(), Errno> {
    let fd = usize::try_from(backing).map_err(|_| Errno::BADF)?;
    // SAFETY: LOOP_SET_FD takes the backing file descriptor as an integer argument.
    unsafe { ioctl(dev, IntegerSetter::<LOOP_SET_FD>::new_usize(fd)) }
}

/// `ioctl(loop_fd, LOOP_SET_STATUS64, &info)`.
#[doc(alias = "LOOP_SET_STATUS64")]
pub fn set_status64(dev: impl AsFd, info: &LoopInfo64) -> Result<(), Errno> {
    // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64`, mirrored by `LoopInfo64`.
    unsafe { ioctl(dev, Setter::<LOOP_SET_STATUS64, LoopInfo64>::new(*info)) }
}

/// `ioctl(loop_fd, LOOP_GET_STATUS64, &mut info)`.
#[doc(alias = "LOOP_GET_STATUS64")]
pub fn get_status64(dev: impl AsFd) -> Result<LoopInfo64, Errno> {
    // SAFETY: LOOP_GET_STATUS64 writes a `struct loop_info64`, mirrored by `LoopInfo64`.
    unsafe { ioctl(dev, Getter::<LOOP_GET_STATUS64, LoopInfo64>::new()) }
}

/// `ioctl(loop_fd, LOOP_SET_DIRECT_IO, on)`.
#[doc(alias = "LOOP_SET_DIRECT_IO")]
pub fn set_direct_io(dev: impl AsFd, on: bool) -> Result<(), Errno> {
    // SAFETY: LOOP_SET_DIRECT_IO takes 0 or 1 as an integer argument.
    unsafe {
        ioctl(
            dev,
            IntegerSetter::<LOOP_SET_DIRECT_IO>::new_usize(usize::from(on)),
        )
    }
}

/// `ioctl(loop_fd, LOOP_SET_BLOCK_SIZE, size)`.
#[doc(alias = "LOOP_SET_BLOCK_SIZE")]
pub fn set_block_size(dev: impl AsFd, size: u32) -> Result<(), Errno> {
    let size = usize::try_from(size).map_err(|_| Errno::INVAL)?;
    // SAFETY: LOOP_SET_BLOCK_SIZE takes the block size as an integer argument.
    unsafe { ioctl(dev, IntegerSetter::<LOOP_SET_BLOCK_SIZE>::new_usize(size)) }
}

/// `ioctl(loop_fd, LOOP_CLR_FD)`: detach (deferred to the last close when others hold it open).
#[doc(alias = "LOOP_CLR_FD")]
pub fn clr_fd(dev: impl AsFd) -> Result<(), Errno> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    unsafe { ioctl(dev, NoArg::<LOOP_CLR_FD>::new()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
