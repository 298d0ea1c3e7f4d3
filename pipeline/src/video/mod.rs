//! Video output: the ffmpeg H.264/AAC MP4 encoder ([`encoder`]), fragmented-MP4 splitting
//! ([`fmp4`]), thumbnail and contact sheet
//! ([`sheet`]), and the generate orchestration used by the CLI and the service ([`generate`]).

pub mod encoder;
pub mod fmp4;
pub mod generate;
pub mod idle;
pub mod sheet;

pub use encoder::{EncoderConfig, FragmentSink, Mp4Encoder, FPS};
pub use fmp4::{Fragment, FragmentSplitter};
pub use generate::{
    chunk_starts, generate_local, generate_streamed, generate_video, GenerateOutput, GenerateRequest, GenerateStats,
    LocalGenerate, Progress,
};
pub use idle::render_idle;
pub use sheet::{write_jpeg, ContactSheet};
