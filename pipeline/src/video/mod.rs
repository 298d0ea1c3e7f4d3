//! Video output: the ffmpeg H.264/AAC MP4 encoder ([`encoder`]), fragmented-MP4 splitting
//! ([`fmp4`]), thumbnail and contact sheet
//! ([`sheet`]), the generate orchestration used by the CLI and the service ([`generate`]), and
//! the joining of a split session's parts ([`join`]), and ffmpeg processes started ahead of need
//! ([`warm`]).

pub mod encoder;
pub mod fmp4;
pub mod generate;
pub mod idle;
pub mod join;
pub mod sheet;
pub mod warm;
pub mod yuv;

pub use encoder::{set_x264, x264, ByteSink, EncoderConfig, FragmentSink, Mp4Encoder, FPS, X264};
pub use fmp4::{track_samples, Fragment, FragmentSplitter};
pub use generate::{
    chunk_starts, generate_local, generate_part, generate_streamed, generate_streamed_until, generate_video,
    generate_video_until, GenerateOutput, GenerateRequest, GenerateStats, LocalGenerate, Progress, STOPPED,
};
pub use idle::render_idle;
pub use join::{split_parts, MuxFeed, PartMuxer};
pub use sheet::{write_jpeg, ContactSheet};
