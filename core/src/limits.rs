//! Size limits a receiver enforces on every message read from the wire.

/// Limits on what a receiver accepts. Each side announces its limits in the handshake, and a
/// sender refuses locally (with `FrameTooLarge`) to send what its peer would reject.
///
/// The defaults admit multi-GiB arrays (which travel as 64 MiB shards anyway) while bounding
/// what a garbage length can make a receiver allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single frame, after decompression. Default 4 GiB.
    pub max_frame_size: u64,
    /// Most frames in one message. Default 65,536.
    pub max_frames: u32,
    /// Largest header. Default 64 MiB.
    pub max_header_size: u64,
    /// Largest whole message (header plus frames as sent). Default 64 GiB.
    pub max_message_size: u64,
}

impl Limits {
    /// Default maximum frame size: 4 GiB.
    pub const DEFAULT_MAX_FRAME_SIZE: u64 = 4 << 30;
    /// Default maximum frame count: 65,536.
    pub const DEFAULT_MAX_FRAMES: u32 = 65_536;
    /// Default maximum header size: 64 MiB.
    pub const DEFAULT_MAX_HEADER_SIZE: u64 = 64 << 20;
    /// Default maximum message size: 64 GiB.
    pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 64 << 30;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: Self::DEFAULT_MAX_FRAME_SIZE,
            max_frames: Self::DEFAULT_MAX_FRAMES,
            max_header_size: Self::DEFAULT_MAX_HEADER_SIZE,
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}
