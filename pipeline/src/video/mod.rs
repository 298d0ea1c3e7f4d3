//! Video output: the ffmpeg H.264/AAC MP4 encoder ([`encoder`]), thumbnail and contact sheet
//! ([`sheet`]), and the generate orchestration used by the CLI and the service ([`generate`]).

pub mod encoder;
pub mod generate;
pub mod sheet;

pub use encoder::{EncoderConfig, Mp4Encoder, FPS};
pub use generate::{
    generate_local, generate_video, GenerateOutput, GenerateRequest, GenerateStats, LocalGenerate, Progress,
};
pub use sheet::{write_jpeg, ContactSheet};
