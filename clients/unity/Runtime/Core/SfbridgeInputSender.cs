// sfbridge Unity client - input-frame sender (PUB socket) for video-to-video: the game's own render
// goes to the daemon's input socket (docs/PROTOCOL.md, input socket). No UnityEngine references.
//
// Why a queue of at most two frames and a background thread: the caller (Unity's main thread, in an
// AsyncGPUReadback callback) must never wait for the network. Submit() only swaps a reference; the
// sender thread connects, sends at most MaxFps frames per second and, when the daemon is slow or gone,
// drops the older queued frame so the newest always wins. Reconnects by itself with backoff.

using System;
using System.Collections.Generic;
using System.Threading;

namespace Sfbridge
{
    /// <summary>One input frame: an encoded JPEG, or RGB24 / RGBA32 pixels (converted to RGB24 on the
    /// sender thread). Rows top first unless FlipRows (Unity's GPU readback is bottom row first).</summary>
    public sealed class SfbridgeInputFrame
    {
        public string Format = "rgb24";
        public int Width;
        public int Height;
        /// <summary>JPEG bytes, or Width*Height*3 (RGB24) / Width*Height*4 (RGBA32) pixel bytes.</summary>
        public byte[] Pixels;
        /// <summary>Bytes per pixel of Pixels for raw frames: 3 (RGB24) or 4 (RGBA32, alpha dropped).</summary>
        public int PixelStride = 3;
        /// <summary>Pixels has the bottom row first: flip while converting.</summary>
        public bool FlipRows;
        /// <summary>Capture time, Unix seconds (SfbridgeTime.Now()); echoed in output frame headers.</summary>
        public double TCap;
    }

    /// <summary>Sends input frames to the daemon's input endpoint (a ZMTP PUB connecting to its bound
    /// SUB). Message: [msgpack header {format, w, h, t_cap, client, seq}, payload].</summary>
    public sealed class SfbridgeInputSender : IDisposable
    {
        public const int MaxSide = 4096;

        readonly ZmtpEndpoint _endpoint;
        readonly string _endpointText;
        readonly string _clientId;
        readonly object _lock = new object();
        readonly Queue<SfbridgeInputFrame> _queue = new Queue<SfbridgeInputFrame>(2);
        readonly AutoResetEvent _wake = new AutoResetEvent(false);
        sealed class RunFlag { public volatile bool Stop; }
        RunFlag _flag = new RunFlag { Stop = true };
        Thread _thread;
        ZmtpConnection _conn;
        long _seq;
        int _state = (int)SfbridgeConnectionState.Disconnected;
        long _sent, _dropped, _connects, _sendFailures;

        /// <summary>At most this many frames per second leave (16 = the model's rate; the daemon drops a
        /// client past 64 per second).</summary>
        public double MaxFps = 16;
        /// <summary>Frames waiting to be sent, 1 or 2; a new frame past it drops the oldest.</summary>
        public int QueueCapacity = 2;
        public int ConnectTimeoutMs = 2000;
        /// <summary>A send that cannot finish within this (daemon stuck) drops the connection.</summary>
        public int SendTimeoutMs = 1000;
        public int ReconnectMinMs = 100;
        public int ReconnectMaxMs = 2000;

        /// <summary>Raised on the sender thread with diagnostics (connect failures, bad frames).</summary>
        public event Action<string> Log;

        public string ClientId { get { return _clientId; } }
        public string Endpoint { get { return _endpointText; } }
        public long FramesSent { get { return Interlocked.Read(ref _sent); } }
        /// <summary>Frames replaced by a newer one before they could leave.</summary>
        public long FramesDropped { get { return Interlocked.Read(ref _dropped); } }
        public long Connects { get { return Interlocked.Read(ref _connects); } }
        public long SendFailures { get { return Interlocked.Read(ref _sendFailures); } }
        /// <summary>Sequence number the next frame gets.</summary>
        public long NextSeq { get { return Interlocked.Read(ref _seq); } }
        public SfbridgeConnectionState State { get { return (SfbridgeConnectionState)_state; } }

        /// <param name="endpoint">the daemon's input endpoint, e.g. tcp://127.0.0.1:5557</param>
        /// <param name="clientId">names this sender in frame headers and errors (1..64 chars; default unity-PID-RANDOM)</param>
        public SfbridgeInputSender(string endpoint, string clientId = null)
        {
            _endpoint = ZmtpEndpoint.Parse(endpoint);
            _endpointText = endpoint;
            if (string.IsNullOrEmpty(clientId))
                clientId = "unity-" + System.Diagnostics.Process.GetCurrentProcess().Id + "-" + new Random().Next(0x1000000).ToString("x6");
            if (clientId.Length > 64) throw new ArgumentException("clientId must be 1..64 characters");
            _clientId = clientId;
        }

        /// <summary>Starts the sender thread (idempotent).</summary>
        public void Start()
        {
            if (_thread != null) return;
            var flag = new RunFlag();
            _flag = flag;
            _thread = new Thread(() => Run(flag));
            _thread.IsBackground = true;
            _thread.Name = "sfbridge-input";
            _thread.Start();
        }

        /// <summary>Queues a frame; never blocks. Returns false when an older queued frame was dropped
        /// to make room. Throws ArgumentException for a frame the daemon would refuse.</summary>
        public bool Submit(SfbridgeInputFrame frame)
        {
            Validate(frame);
            bool kept = true;
            lock (_lock)
            {
                int cap = Math.Max(1, Math.Min(2, QueueCapacity));
                while (_queue.Count >= cap)
                {
                    _queue.Dequeue();
                    Interlocked.Increment(ref _dropped);
                    kept = false;
                }
                _queue.Enqueue(frame);
            }
            _wake.Set();
            return kept;
        }

        /// <summary>Queues RGB24 pixels, rows top first (copied by the caller if it reuses the array).</summary>
        public bool SubmitRgb24(byte[] rgb, int width, int height, double tCap)
        {
            return Submit(new SfbridgeInputFrame { Format = "rgb24", Width = width, Height = height, Pixels = rgb, PixelStride = 3, TCap = tCap });
        }

        /// <summary>Queues encoded JPEG bytes of the given size.</summary>
        public bool SubmitJpeg(byte[] jpeg, int width, int height, double tCap)
        {
            return Submit(new SfbridgeInputFrame { Format = "jpeg", Width = width, Height = height, Pixels = jpeg, TCap = tCap });
        }

        static void Validate(SfbridgeInputFrame f)
        {
            if (f == null || f.Pixels == null) throw new ArgumentException("input frame without pixels");
            if (f.Width < 1 || f.Height < 1 || f.Width > MaxSide || f.Height > MaxSide)
                throw new ArgumentException("input frame size " + f.Width + "x" + f.Height + " is outside 1.." + MaxSide);
            if (f.Format == "jpeg") return;
            if (f.Format != "rgb24") throw new ArgumentException("input frame format must be jpeg or rgb24, got " + f.Format);
            if (f.PixelStride != 3 && f.PixelStride != 4) throw new ArgumentException("PixelStride must be 3 or 4");
            long need = (long)f.Width * f.Height * f.PixelStride;
            if (f.Pixels.Length < need)
                throw new ArgumentException("input frame has " + f.Pixels.Length + " bytes, " + f.Width + "x" + f.Height + "x" + f.PixelStride + " needs " + need);
        }

        /// <summary>The [header, payload] message of a frame (public for tests and custom transports).</summary>
        public static List<byte[]> Encode(SfbridgeInputFrame f, string client, long seq)
        {
            byte[] payload = f.Pixels;
            if (f.Format == "rgb24" && (f.PixelStride != 3 || f.FlipRows || f.Pixels.Length != f.Width * f.Height * 3))
                payload = ToRgb24(f);
            var header = new Dictionary<string, object>
            {
                { "format", f.Format },
                { "w", f.Width },
                { "h", f.Height },
                { "t_cap", f.TCap },
                { "client", client },
                { "seq", seq },
            };
            return new List<byte[]> { MsgPackWriter.Pack(header), payload };
        }

        static byte[] ToRgb24(SfbridgeInputFrame f)
        {
            int w = f.Width, h = f.Height, s = f.PixelStride;
            var rgb = new byte[w * h * 3];
            for (int y = 0; y < h; y++)
            {
                int src = (f.FlipRows ? h - 1 - y : y) * w * s;
                int dst = y * w * 3;
                if (s == 3)
                {
                    Buffer.BlockCopy(f.Pixels, src, rgb, dst, w * 3);
                    continue;
                }
                for (int x = 0; x < w; x++, src += s, dst += 3)
                {
                    rgb[dst] = f.Pixels[src];
                    rgb[dst + 1] = f.Pixels[src + 1];
                    rgb[dst + 2] = f.Pixels[src + 2];
                }
            }
            return rgb;
        }

        void Say(string msg)
        {
            var h = Log;
            if (h == null) return;
            try { h(msg); } catch (Exception) { }
        }

        SfbridgeInputFrame Take()
        {
            lock (_lock) return _queue.Count > 0 ? _queue.Dequeue() : null;
        }

        void Run(RunFlag flag)
        {
            int delay = ReconnectMinMs;
            int lastSendTick = Environment.TickCount - 100000;
            while (!flag.Stop)
            {
                _state = (int)SfbridgeConnectionState.Connecting;
                ZmtpConnection c = null;
                try
                {
                    c = ZmtpConnection.Connect(_endpoint, "PUB", ConnectTimeoutMs);
                    c.SendTimeoutMs = SendTimeoutMs;
                    lock (_lock) { if (flag.Stop) break; _conn = c; }
                    Interlocked.Increment(ref _connects);
                    _state = (int)SfbridgeConnectionState.Connected;
                    delay = ReconnectMinMs;
                    while (!flag.Stop)
                    {
                        // The SUB peer sends its subscription and PINGs: read them so its buffer never fills.
                        while (c.Available > 0) c.Receive();
                        int minGap = MaxFps > 0 ? (int)Math.Ceiling(1000.0 / MaxFps) : 0;
                        int wait = minGap - unchecked(Environment.TickCount - lastSendTick);
                        if (wait > 0) { _wake.WaitOne(Math.Min(wait, 100)); continue; }
                        SfbridgeInputFrame f = Take();
                        if (f == null) { _wake.WaitOne(100); continue; }
                        c.Send(Encode(f, _clientId, Interlocked.Increment(ref _seq) - 1));
                        lastSendTick = Environment.TickCount;
                        Interlocked.Increment(ref _sent);
                    }
                }
                catch (Exception e)
                {
                    if (!flag.Stop)
                    {
                        Interlocked.Increment(ref _sendFailures);
                        Say("input " + _endpointText + ": " + e.GetType().Name + ": " + e.Message);
                    }
                }
                finally
                {
                    lock (_lock) { if (_conn == c) _conn = null; }
                    if (c != null) c.Dispose();
                }
                if (flag.Stop) break;
                _state = (int)SfbridgeConnectionState.Disconnected;
                int start = Environment.TickCount;
                while (!flag.Stop && unchecked(Environment.TickCount - start) < delay) Thread.Sleep(20);
                delay = Math.Min(ReconnectMaxMs, delay * 2);
            }
            _state = (int)SfbridgeConnectionState.Disconnected;
        }

        /// <summary>Stops the thread (joined up to joinTimeoutMs) and closes the connection; queued frames
        /// are dropped.</summary>
        public void Stop(int joinTimeoutMs = 1000)
        {
            _flag.Stop = true;
            _wake.Set();
            lock (_lock)
            {
                if (_conn != null) _conn.Dispose();
                _queue.Clear();
            }
            Thread t = _thread;
            if (t != null && t != Thread.CurrentThread && !t.Join(joinTimeoutMs))
                Say("input thread did not stop within " + joinTimeoutMs + " ms");
            _thread = null;
        }

        public void Dispose() { Stop(); }
    }
}
