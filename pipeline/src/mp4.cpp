// H.264 MP4 through FFmpeg's libraries (libavformat muxes, libavcodec encodes with libx264, libswscale
// converts RGB to 4:2:0 YUV with BT.601 coefficients, limited range, as the stream is tagged). Built only
// where FFmpeg was found (PIPESWAP_HAVE_FFMPEG); otherwise both functions say what to do instead.
#include "pipeswap/pipeline/video_output.h"

#include <fcntl.h>
#include <unistd.h>

#include <memory>

#include "pipeswap/core/error.h"
#include "pipeswap/core/weights.h"

#ifdef PIPESWAP_HAVE_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/opt.h>
#include <libavutil/rational.h>
#include <libswscale/swscale.h>
}
#endif

namespace pipeswap::pipeline {

#ifdef PIPESWAP_HAVE_FFMPEG
namespace {

struct CodecContextFree {
  void operator()(AVCodecContext* p) const { avcodec_free_context(&p); }
};
struct FrameFree {
  void operator()(AVFrame* p) const { av_frame_free(&p); }
};
struct PacketFree {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwsFree {
  void operator()(SwsContext* p) const { sws_freeContext(p); }
};
struct OutputFree {
  void operator()(AVFormatContext* p) const {
    if (p->pb) avio_closep(&p->pb);
    avformat_free_context(p);
  }
};
struct InputClose {
  void operator()(AVFormatContext* p) const { avformat_close_input(&p); }
};
using CodecContext = std::unique_ptr<AVCodecContext, CodecContextFree>;
using Frame = std::unique_ptr<AVFrame, FrameFree>;
using Packet = std::unique_ptr<AVPacket, PacketFree>;
using Sws = std::unique_ptr<SwsContext, SwsFree>;

std::string av_error(int err) {
  char text[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(err, text, sizeof(text));
  return text;
}

// Throws `E` naming the call and FFmpeg's reason when `rc` is negative.
#define PS_CHECK_AV(rc, E, ...)                                                         \
  do {                                                                                  \
    const int av_rc_ = (rc);                                                            \
    PS_CHECK(av_rc_ >= 0, E, "{}: {}", fmt::format(__VA_ARGS__), av_error(av_rc_)); \
  } while (0)

// Removes the temporary file unless the write completed (and renamed it).
struct TempFile {
  std::string path;
  bool kept = false;
  ~TempFile() {
    if (!kept) ::unlink(path.c_str());
  }
};

}  // namespace

void write_mp4(const std::string& path, const torch::Tensor& frames, double fps) {
  PS_CHECK(frames.dim() == 4 && frames.size(3) == 3 && frames.scalar_type() == torch::kUInt8, ConfigError,
           "MP4 frames must be uint8 [F, H, W, 3], got {}", shape_str(frames));
  const int n = static_cast<int>(frames.size(0)), h = static_cast<int>(frames.size(1)),
            w = static_cast<int>(frames.size(2));
  PS_CHECK(w % 2 == 0 && h % 2 == 0, ConfigError, "H.264 in 4:2:0 needs an even width and height, got {}x{}", w, h);
  PS_CHECK(fps > 0, ConfigError, "--fps must be positive (got {})", fps);
  const torch::Tensor rgb = frames.to(torch::kCPU).contiguous();
  const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
  if (!codec) codec = avcodec_find_encoder(AV_CODEC_ID_H264);
  PS_CHECK(codec != nullptr, ConfigError,
           "--output {}: the FFmpeg this pipeswap was built with has no H.264 encoder (libx264): write PNG frames "
           "with --output frames/ instead, or use an FFmpeg built with libx264",
           path);

  TempFile tmp{fmt::format("{}.tmp.{}", path, ::getpid())};
  AVFormatContext* raw = nullptr;
  PS_CHECK_AV(avformat_alloc_output_context2(&raw, nullptr, "mp4", tmp.path.c_str()), IoError,
              "cannot write {}: FFmpeg has no MP4 muxer", path);
  std::unique_ptr<AVFormatContext, OutputFree> out(raw);
  AVStream* stream = avformat_new_stream(out.get(), nullptr);
  PS_CHECK(stream != nullptr, IoError, "cannot write {}: FFmpeg could not add a video stream", path);
  CodecContext enc(avcodec_alloc_context3(codec));
  PS_CHECK(enc != nullptr, IoError, "cannot write {}: FFmpeg could not allocate an encoder", path);
  const AVRational rate = av_d2q(fps, 100000);
  enc->width = w;
  enc->height = h;
  enc->pix_fmt = AV_PIX_FMT_YUV420P;
  enc->time_base = av_inv_q(rate);
  enc->framerate = rate;
  enc->colorspace = AVCOL_SPC_SMPTE170M;  // what swscale's default coefficients (BT.601) make
  enc->color_range = AVCOL_RANGE_MPEG;
  if (out->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  av_opt_set(enc->priv_data, "crf", "17", 0);  // libx264: visually lossless; ignored by other encoders
  av_opt_set(enc->priv_data, "preset", "medium", 0);
  PS_CHECK_AV(avcodec_open2(enc.get(), codec, nullptr), IoError, "cannot write {}: the {} encoder refused {}x{} at {} fps",
              path, codec->name, w, h, fps);
  PS_CHECK_AV(avcodec_parameters_from_context(stream->codecpar, enc.get()), IoError, "cannot write {}", path);
  stream->time_base = enc->time_base;
  stream->avg_frame_rate = rate;
  PS_CHECK_AV(avio_open(&out->pb, tmp.path.c_str(), AVIO_FLAG_WRITE), IoError, "cannot write {}: opening {} failed",
              path, tmp.path);
  PS_CHECK_AV(avformat_write_header(out.get(), nullptr), IoError, "cannot write {}: the MP4 header", path);

  Sws sws(sws_getContext(w, h, AV_PIX_FMT_RGB24, w, h, AV_PIX_FMT_YUV420P, SWS_BICUBIC | SWS_ACCURATE_RND, nullptr,
                         nullptr, nullptr));
  PS_CHECK(sws != nullptr, IoError, "cannot write {}: swscale cannot convert RGB to YUV 4:2:0", path);
  Frame frame(av_frame_alloc());
  Packet packet(av_packet_alloc());
  PS_CHECK(frame && packet, IoError, "cannot write {}: out of memory", path);
  frame->format = AV_PIX_FMT_YUV420P;
  frame->width = w;
  frame->height = h;
  PS_CHECK_AV(av_frame_get_buffer(frame.get(), 0), IoError, "cannot write {}: a frame buffer", path);
  auto drain = [&](const AVFrame* f) {
    PS_CHECK_AV(avcodec_send_frame(enc.get(), f), IoError, "cannot write {}: encoding", path);
    for (;;) {
      const int rc = avcodec_receive_packet(enc.get(), packet.get());
      if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return;
      PS_CHECK_AV(rc, IoError, "cannot write {}: encoding", path);
      av_packet_rescale_ts(packet.get(), enc->time_base, stream->time_base);
      packet->stream_index = stream->index;
      PS_CHECK_AV(av_interleaved_write_frame(out.get(), packet.get()), IoError, "cannot write {}", path);
    }
  };
  const int stride = 3 * w;
  for (int f = 0; f < n; ++f) {
    PS_CHECK_AV(av_frame_make_writable(frame.get()), IoError, "cannot write {}: a frame buffer", path);
    const uint8_t* src[1] = {rgb[f].data_ptr<uint8_t>()};
    sws_scale(sws.get(), src, &stride, 0, h, frame->data, frame->linesize);
    frame->pts = f;
    drain(frame.get());
  }
  drain(nullptr);
  PS_CHECK_AV(av_write_trailer(out.get()), IoError, "cannot write {}: the MP4 index", path);
  PS_CHECK_AV(avio_closep(&out->pb), IoError, "cannot write {}: closing {}", path, tmp.path);
  const int fd = ::open(tmp.path.c_str(), O_RDONLY | O_CLOEXEC);
  const bool synced = fd >= 0 && ::fsync(fd) == 0;
  if (fd >= 0) ::close(fd);
  PS_CHECK(synced && ::rename(tmp.path.c_str(), path.c_str()) == 0, IoError,
           "cannot write {}: syncing or renaming {} failed (is the disk full?)", path, tmp.path);
  tmp.kept = true;
}

DecodedVideo read_mp4(const std::string& path) {
  AVFormatContext* raw = nullptr;
  PS_CHECK_AV(avformat_open_input(&raw, path.c_str(), nullptr, nullptr), IoError, "cannot read video {}", path);
  std::unique_ptr<AVFormatContext, InputClose> in(raw);
  PS_CHECK_AV(avformat_find_stream_info(in.get(), nullptr), IoError, "cannot read video {}", path);
  const int index = av_find_best_stream(in.get(), AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
  PS_CHECK_AV(index, IoError, "{} has no video stream", path);
  const AVStream* stream = in->streams[index];
  const AVCodec* codec = avcodec_find_decoder(stream->codecpar->codec_id);
  PS_CHECK(codec != nullptr, IoError, "no decoder for {}'s {} stream", path, avcodec_get_name(stream->codecpar->codec_id));
  CodecContext dec(avcodec_alloc_context3(codec));
  PS_CHECK(dec != nullptr, IoError, "cannot read video {}: out of memory", path);
  PS_CHECK_AV(avcodec_parameters_to_context(dec.get(), stream->codecpar), IoError, "cannot read video {}", path);
  PS_CHECK_AV(avcodec_open2(dec.get(), codec, nullptr), IoError, "cannot read video {}", path);
  Frame frame(av_frame_alloc());
  Packet packet(av_packet_alloc());
  Sws sws;
  std::vector<torch::Tensor> frames;
  auto take = [&] {
    for (;;) {
      const int rc = avcodec_receive_frame(dec.get(), frame.get());
      if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return;
      PS_CHECK_AV(rc, IoError, "cannot decode {}", path);
      const int w = frame->width, h = frame->height;
      if (!sws) {
        sws.reset(sws_getContext(w, h, static_cast<AVPixelFormat>(frame->format), w, h, AV_PIX_FMT_RGB24,
                                 SWS_BICUBIC | SWS_ACCURATE_RND, nullptr, nullptr, nullptr));
        PS_CHECK(sws != nullptr, IoError, "cannot convert {}'s frames to RGB", path);
      }
      auto rgb = torch::empty({h, w, 3}, torch::kUInt8);
      uint8_t* dst[1] = {rgb.data_ptr<uint8_t>()};
      const int stride = 3 * w;
      sws_scale(sws.get(), frame->data, frame->linesize, 0, h, dst, &stride);
      frames.push_back(rgb);
    }
  };
  while (av_read_frame(in.get(), packet.get()) >= 0) {
    if (packet->stream_index == index) {
      const int rc = avcodec_send_packet(dec.get(), packet.get());
      av_packet_unref(packet.get());
      PS_CHECK_AV(rc, IoError, "cannot decode {}", path);
      take();
    } else {
      av_packet_unref(packet.get());
    }
  }
  PS_CHECK_AV(avcodec_send_packet(dec.get(), nullptr), IoError, "cannot decode {}", path);
  take();
  PS_CHECK(!frames.empty(), IoError, "{} holds no frames", path);
  DecodedVideo v;
  v.frames = torch::stack(frames);
  v.codec = avcodec_get_name(stream->codecpar->codec_id);
  v.fps = av_q2d(stream->avg_frame_rate);
  return v;
}

#else

void write_mp4(const std::string& path, const torch::Tensor&, double) {
  check_output(path, OutputKind::kMp4);  // says what is missing and what to do instead
}
DecodedVideo read_mp4(const std::string& path) {
  PS_THROW(ConfigError, "cannot read {}: this pipeswap was built without FFmpeg's libraries", path);
}

#endif

}  // namespace pipeswap::pipeline
