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
const IFF_VNET_HDR: libc::c_short = 0x4000;
// _IOW('T', 202, int)
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
// _IOW('T', 208, unsigned int)
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUN_F_CSUM`: we take packets with a partial checksum.
const TUN_F_CSUM: libc::c_ulong = 0x01;
/// `TUN_F_TSO4`: we take TCP/IPv4 super-packets (and cut them ourselves).
const TUN_F_TSO4: libc::c_ulong = 0x02;

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
    #[error("cannot turn on checksum and TCP segmentation offloads on TUN device {name:?}: {source} (set `offloads = false` to run without them)")]
    Offload {
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
    /// Every packet read and written carries a `virtio_net_hdr` (`IFF_VNET_HDR`), and the
    /// kernel hands over TCP super-packets and partial checksums (`TUNSETOFFLOAD`): see
    /// `datachannel::offload`.
    offloads: bool,
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
        Self::open_full(name, kind, multi_queue, nonblocking, false)
    }

    /// Like [`Tun::open_with`]; `offloads` turns on the `virtio_net_hdr` in front of every
    /// packet and checksum + TCPv4 segmentation offloads (TUN only).
    pub fn open_full(
        name: &str,
        kind: Kind,
        multi_queue: bool,
        nonblocking: bool,
        offloads: bool,
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
        if offloads {
            req.flags |= IFF_VNET_HDR;
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
        if offloads {
            // SAFETY: TUNSETOFFLOAD takes its flags by value.
            let rc = unsafe {
                libc::ioctl(
                    file.as_raw_fd(),
                    TUNSETOFFLOAD as _,
                    TUN_F_CSUM | TUN_F_TSO4,
                )
            };
            if rc < 0 {
                return Err(TunError::Offload {
                    name: name.to_string(),
                    source: io::Error::last_os_error(),
                });
            }
        }
        Ok(Tun {
            file,
            name: name.to_string(),
            offloads,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether packets carry a `virtio_net_hdr` (see [`Tun::open_full`]).
    pub fn offloads(&self) -> bool {
        self.offloads
    }

    /// Writes one packet given as a `virtio_net_hdr` and the packet, without joining them
    /// first (one `writev`). Without offloads the header is left out.
    pub fn send_with_header(&self, header: &[u8], packet: &[u8]) -> io::Result<usize> {
        if !self.offloads {
            return self.send(packet);
        }
        (&self.file).write_vectored(&[io::IoSlice::new(header), io::IoSlice::new(packet)])
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
            offloads: self.offloads,
        })
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
