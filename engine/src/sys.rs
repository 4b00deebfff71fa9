//! The syscalls std does not wrap: block-device ioctls, fd flags, SEEK_DATA/SEEK_HOLE, fallocate,
//! extended attributes.
//!
//! One of the engine's unsafe islands: every `unsafe` block here is a single FFI call on a file
//! descriptor that the caller keeps open for the duration of the call.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

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

/// Logical block size of a block device (the O_DIRECT alignment unit), `BLKSSZGET`.
pub fn block_device_logical_block_size(file: &File) -> io::Result<u32> {
    Ok(rustix::fs::ioctl_blksszget(file)?)
}

/// The open file status flags (`fcntl(F_GETFL)`), as the kernel reports them now.
pub fn status_flags(file: &File) -> io::Result<i32> {
    // SAFETY: F_GETFL takes no argument and only reads the descriptor's flags.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// True if and only if the descriptor was opened with `O_DIRECT` (asks the kernel, not our notes).
pub fn is_direct(file: &File) -> io::Result<bool> {
    Ok(status_flags(file)? & libc::O_DIRECT != 0)
}

/// Which way `seek_data_hole` looks.
#[derive(Clone, Copy, Debug)]
pub enum Whence {
    /// `SEEK_DATA`: the next offset at or after `from` that holds data.
    Data,
    /// `SEEK_HOLE`: the next offset at or after `from` that is a hole (EOF counts as one).
    Hole,
}

/// `lseek(SEEK_DATA|SEEK_HOLE)`. `Ok(None)` means ENXIO: no more data after `from`.
pub fn seek_data_hole(file: &File, from: u64, whence: Whence) -> io::Result<Option<u64>> {
    let w = match whence {
        Whence::Data => libc::SEEK_DATA,
        Whence::Hole => libc::SEEK_HOLE,
    };
    // SAFETY: lseek only moves the descriptor's offset; the engine never uses that offset
    // (all I/O is positional), so concurrent preads are unaffected.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, w) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(err);
    }
    Ok(Some(rc as u64))
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
        ZeroMode::Zero => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        ZeroMode::Punch => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    };
    // SAFETY: fallocate takes plain integers and a descriptor we hold open.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), flags, offset as libc::off_t, len as libc::off_t) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Clears `O_NONBLOCK` on a descriptor that was opened with it (so that opening a FIFO swapped
/// in behind our back could not block) before it is used for ordinary blocking I/O.
pub fn clear_nonblock(file: &File) -> io::Result<()> {
    let flags = status_flags(file)?;
    // SAFETY: F_SETFL takes an int of flags and only changes the descriptor's status flags.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fsetxattr`: sets the extended attribute `name` (a C string without its NUL) to `value`.
pub fn set_xattr(file: &File, name: &str, value: &[u8]) -> io::Result<()> {
    let name = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the name is a live NUL-terminated string and the value a live slice of the length
    // passed; the kernel only reads both during the call.
    let rc = unsafe { libc::fsetxattr(file.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fgetxattr` into a buffer of at most `max` bytes: `Ok(None)` if the attribute is absent or the
/// file system has no extended attributes.
pub fn get_xattr(file: &File, name: &str, max: usize) -> io::Result<Option<Vec<u8>>> {
    let name = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; max];
    // SAFETY: the name is a live NUL-terminated string; the kernel writes at most `buf.len()`
    // bytes into the live buffer.
    let rc = unsafe { libc::fgetxattr(file.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
            _ => Err(err),
        };
    }
    buf.truncate(rc as usize);
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn blkgetsize64_is_the_kernels_number_on_x86_64() {
        assert_eq!(super::BLKGETSIZE64 as u64, 0x8008_1272);
    }
}
