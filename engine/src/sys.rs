//! The syscalls std does not wrap: block-device ioctls, fd flags, SEEK_DATA/SEEK_HOLE, fallocate,
//! extended attributes, I/O priority, `renameat2(RENAME_NOREPLACE)`.
//!
//! Everything goes through rustix's safe wrappers except `BLKGETSIZE64` and `LOOP_GET_STATUS64`,
//! for which rustix has none (one `unsafe` ioctl each on a descriptor the caller keeps open), and
//! `ioprio_set`/`ioprio_get` (two `unsafe` syscalls that take integers only).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use rustix::fs::{
    fallocate, fcntl_getfl, fcntl_setfl, fgetxattr, fsetxattr, getxattr, listxattr, seek, FallocateFlags, OFlags,
    SeekFrom, XattrFlags,
};
use rustix::io::Errno;

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`, encoded for this architecture (the direction and
/// size bits differ between x86, ppc64, mips and sparc).
const BLKGETSIZE64: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<usize>(0x12, 114);

/// Size in bytes of a block device.
pub fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// `LOOP_GET_STATUS64` (`0x4C05` on every architecture: no direction or size bits).
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;

/// The kernel's `struct loop_info64` (`linux/loop.h`), 232 bytes on every architecture.
#[repr(C)]
#[allow(dead_code)] // the kernel's layout; only the backing file's device and inode are read
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);

/// The file behind a loop device (or a partition of one) as the loop driver holds it: the
/// device number (as `major`, `minor`) and inode of its backing file, however it is named now
/// (its name removed while another hard link remains, renamed). `Ok(None)` where `file` is not a
/// loop device (`ENOTTY`, `EINVAL`) or has no backing file (`ENXIO`).
pub fn loop_backing_id(file: &File) -> io::Result<Option<((u32, u32), u64)>> {
    let mut info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: 0,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64` (232 bytes, the layout above)
    // through the pointer, which points at a live local of that type.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_GET_STATUS64 as _, &mut info as *mut LoopInfo64) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTTY | libc::EINVAL | libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    // The kernel encodes `lo_device` with `huge_encode_dev`: 12 bits of major, 20 of minor.
    let dev = info.lo_device;
    let major = ((dev & 0xfff00) >> 8) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    Ok(Some(((major, minor), info.lo_inode)))
}

/// Logical block size of a block device (the O_DIRECT alignment unit), `BLKSSZGET`.
pub fn block_device_logical_block_size(file: &File) -> io::Result<u32> {
    Ok(rustix::fs::ioctl_blksszget(file)?)
}

/// The open file status flags (`fcntl(F_GETFL)`), as the kernel reports them now.
pub fn status_flags(file: &File) -> io::Result<OFlags> {
    Ok(fcntl_getfl(file)?)
}

/// True if and only if the descriptor was opened with `O_DIRECT` (asks the kernel, not our notes).
pub fn is_direct(file: &File) -> io::Result<bool> {
    Ok(status_flags(file)?.contains(OFlags::DIRECT))
}

/// Which way `seek_data_hole` looks.
#[derive(Clone, Copy, Debug)]
pub enum Whence {
    /// `SEEK_DATA`: the next offset at or after `from` that holds data.
    Data,
    /// `SEEK_HOLE`: the next offset at or after `from` that is a hole (EOF counts as one).
    Hole,
}

/// `lseek(SEEK_DATA|SEEK_HOLE)`. `Ok(None)` means ENXIO: no more data after `from`. It moves the
/// descriptor's offset, which the engine never uses (all its I/O is positional).
pub fn seek_data_hole(file: &File, from: u64, whence: Whence) -> io::Result<Option<u64>> {
    let to = match whence {
        Whence::Data => SeekFrom::Data(from),
        Whence::Hole => SeekFrom::Hole(from),
    };
    match seek(file, to) {
        Ok(at) => Ok(Some(at)),
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How `fallocate` should turn a range into zeroes.
#[derive(Clone, Copy, Debug)]
pub enum ZeroMode {
    /// `FALLOC_FL_ZERO_RANGE`: the range reads as zeroes; the device may offload the write.
    Zero,
    /// `FALLOC_FL_PUNCH_HOLE | KEEP_SIZE`: deallocate (discard) with a zeroes-on-read guarantee.
    Punch,
}

/// Makes `[offset, offset + len)` read as zeroes without writing buffers from user space.
pub fn zero_range(file: &File, offset: u64, len: u64, mode: ZeroMode) -> io::Result<()> {
    let flags = match mode {
        ZeroMode::Zero => FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
        ZeroMode::Punch => FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
    };
    Ok(fallocate(file, flags, offset, len)?)
}

/// Clears `O_NONBLOCK` on a descriptor that was opened with it (so that opening a FIFO swapped
/// in behind our back could not block) before it is used for ordinary blocking I/O.
pub fn clear_nonblock(file: &File) -> io::Result<()> {
    let flags = status_flags(file)?;
    Ok(fcntl_setfl(file, flags - OFlags::NONBLOCK)?)
}

/// Sets `O_DIRECT` on an open descriptor (`fcntl(F_SETFL)`), so that one descriptor can first
/// serve small buffered reads and then aligned direct ones; `EINVAL` where the file system
/// refuses O_DIRECT.
pub fn set_direct(file: &File) -> io::Result<()> {
    let flags = status_flags(file)?;
    Ok(fcntl_setfl(file, flags | OFlags::DIRECT)?)
}

/// `renameat2(RENAME_NOREPLACE)`: renames `from` to `to` only where nothing is at `to`
/// (`AlreadyExists` otherwise); `EINVAL` where the file system does not support it.
pub fn rename_noreplace(from: &std::path::Path, to: &std::path::Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    Ok(renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE)?)
}

/// `fsetxattr`: sets the extended attribute `name` to `value`.
pub fn set_xattr(file: &File, name: &str, value: &[u8]) -> io::Result<()> {
    Ok(fsetxattr(file, name, value, XattrFlags::empty())?)
}

/// The extended attributes of `path` (following links), names and values: none where the file
/// system has none. A name list or value larger than the kernel's 64 KiB limit cannot exist.
pub fn xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    const XATTR_MAX: usize = 64 << 10;
    let mut names = vec![0u8; XATTR_MAX];
    let n = match listxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    let mut value = vec![0u8; XATTR_MAX];
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        match getxattr(path, name.as_str(), &mut value[..]) {
            Ok(len) => out.push((name, value[..len].to_vec())),
            // Removed since it was listed.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// `fgetxattr` into a buffer of at most `max` bytes: `Ok(None)` if the attribute is absent or the
/// file system has no extended attributes.
pub fn get_xattr(file: &File, name: &str, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; max];
    match fgetxattr(file, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(Errno::NODATA | Errno::NOTSUP) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `ioprio_set(IOPRIO_WHO_PROCESS, 0, value)`: the I/O priority of the calling thread, inherited
/// by the threads (and io_uring workers) it starts afterwards. rustix has no wrapper.
pub fn set_io_priority(value: u16) -> io::Result<()> {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    // SAFETY: ioprio_set takes three integers and touches no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            libc::c_long::from(value),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ioprio_get(IOPRIO_WHO_PROCESS, 0)`: the calling thread's I/O priority value.
pub fn io_priority() -> io::Result<u16> {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    // SAFETY: ioprio_get takes two integers and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0 as libc::c_long) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as u16)
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn blkgetsize64_is_the_kernels_number_on_x86_64() {
        assert_eq!(super::BLKGETSIZE64 as u64, 0x8008_1272);
    }
}
