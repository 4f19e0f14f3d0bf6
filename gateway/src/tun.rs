//! TUN and TAP devices: interfaces whose packets (TUN: from the IP header; TAP: Ethernet
//! frames) are read and written through a file descriptor. The daemon writes decrypted client packets into one; the
//! kernel data plane takes them from its ingress.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::fd::{AsRawFd, RawFd},
    os::unix::fs::OpenOptionsExt,
};

const IFF_TUN: libc::c_short = 0x0001;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
// _IOW('T', 202, int)
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("interface name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0} (is the tun module loaded, and are we root?)")]
    Open(#[source] io::Error),
    #[error("cannot create TUN device {name:?}: {source}")]
    Create {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Layer 3 (TUN: IP packets) or layer 2 (TAP: Ethernet frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tun,
    Tap,
}

/// One queue of a TUN device. Dropping the last queue removes the device (unless persistent).
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
}

impl Tun {
    /// Creates (or attaches to) the TUN device `name` without packet-information headers.
    pub fn open(name: &str) -> Result<Self, TunError> {
        Self::open_with(name, Kind::Tun, false, false)
    }

    /// Creates (or attaches to) the TAP device `name`: frames carry an Ethernet header.
    pub fn open_tap(name: &str) -> Result<Self, TunError> {
        Self::open_with(name, Kind::Tap, false, false)
    }

    /// Like [`Tun::open`]; `multi_queue` lets several fds (one per worker) share the device,
    /// `nonblocking` opens the fd with O_NONBLOCK.
    pub fn open_with(
        name: &str,
        kind: Kind,
        multi_queue: bool,
        nonblocking: bool,
    ) -> Result<Self, TunError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(TunError::BadName(name.to_string()));
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if nonblocking {
            opts.custom_flags(libc::O_NONBLOCK);
        }
        let file = opts.open("/dev/net/tun").map_err(TunError::Open)?;
        let mode = match kind {
            Kind::Tun => IFF_TUN,
            Kind::Tap => IFF_TAP,
        };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: mode | IFF_NO_PI,
            _pad: [0; 22],
        };
        if multi_queue {
            req.flags |= IFF_MULTI_QUEUE;
        }
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads an ifreq of the right size from a valid pointer.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if rc < 0 {
            return Err(TunError::Create {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tun {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet; returns its length.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one packet.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        (&self.file).write(packet)
    }

    pub fn try_clone(&self) -> io::Result<Tun> {
        Ok(Tun {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
