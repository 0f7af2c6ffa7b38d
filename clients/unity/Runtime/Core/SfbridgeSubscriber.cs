// sfbridge Unity client - stream subscriber (SUB socket): background receive thread, keeps only
// the newest frame, reconnects by itself with backoff. No UnityEngine references.

using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Text;
using System.Threading;

namespace Sfbridge
{
    /// <summary>Frame payload format (the stream topic).</summary>
    public enum SfbridgeFormat
    {
        /// <summary>Baseline JPEG, decode with ImageConversion.LoadImage (Unity) or any JPEG decoder.</summary>
        Jpeg,
        /// <summary>width*height*3 bytes, rows top to bottom, R G B.</summary>
        Rgb24,
    }

    /// <summary>Connection state of a subscriber or control client.</summary>
    public enum SfbridgeConnectionState
    {
        Disconnected,
        Connecting,
        Connected,
    }

    /// <summary>One received frame: decoded header fields plus the raw payload.</summary>
    public sealed class SfbridgeFrame
    {
        public Dictionary<string, object> Header;
        public byte[] Payload;
        public string Format;
        public string Stream;
        public long Seq;
        public long Block;
        public long Idx;
        public long FrameIndex;
        public double Pts;
        public int Width;
        public int Height;
        public long State;
        public double TGen;
        public double TPub;
        public int Version;
        /// <summary>Unix time (seconds) when the message was read from the socket.</summary>
        public double TReceived;

        /// <summary>Builds a frame from a decoded header; throws MsgPackException on bad fields.</summary>
        public static SfbridgeFrame FromHeader(Dictionary<string, object> h, byte[] payload, string topic)
        {
            var f = new SfbridgeFrame();
            f.Header = h;
            f.Payload = payload;
            f.Format = MsgPackMap.GetString(h, "format", topic);
            f.Stream = MsgPackMap.GetString(h, "stream", "");
            f.Seq = MsgPackMap.GetLong(h, "seq", -1);
            f.Block = MsgPackMap.GetLong(h, "block", 0);
            f.Idx = MsgPackMap.GetLong(h, "idx", 0);
            f.FrameIndex = MsgPackMap.GetLong(h, "frame", 0);
            f.Pts = MsgPackMap.GetDouble(h, "pts", 0);
            f.Width = (int)MsgPackMap.GetLong(h, "w", 0);
            f.Height = (int)MsgPackMap.GetLong(h, "h", 0);
            f.State = MsgPackMap.GetLong(h, "state", 0);
            f.TGen = MsgPackMap.GetDouble(h, "t_gen", 0);
            f.TPub = MsgPackMap.GetDouble(h, "t_pub", 0);
            f.Version = (int)MsgPackMap.GetLong(h, "v", 0);
            f.TReceived = SfbridgeTime.Now();
            if (f.Width <= 0 || f.Height <= 0) throw new MsgPackException("frame header without a valid w/h");
            return f;
        }

        /// <summary>Seconds from publication to now (same machine clocks).</summary>
        public double LatencySeconds { get { return SfbridgeTime.Now() - TPub; } }
    }

    /// <summary>Unix wall clock in seconds.</summary>
    public static class SfbridgeTime
    {
        static readonly DateTime Epoch = new DateTime(1970, 1, 1, 0, 0, 0, DateTimeKind.Utc);

        public static double Now() { return (DateTime.UtcNow - Epoch).TotalSeconds; }
    }

    /// <summary>Subscribes to the daemon's stream (XPUB). A background thread reads everything that
    /// arrives and keeps only the newest frame; call TryTakeLatest() from your render loop. Events
    /// are queued (TryDequeueEvent) and also raised on the background thread (EventReceived).
    /// Reconnects by itself (exponential backoff) when the daemon goes away and comes back.</summary>
    public sealed class SfbridgeSubscriber : IDisposable
    {
        public const int ProtocolVersion = 1;

        readonly ZmtpEndpoint _endpoint;
        readonly string _endpointText;
        readonly SfbridgeFormat _format;
        readonly bool _events;
        readonly ConcurrentQueue<Dictionary<string, object>> _eventQueue = new ConcurrentQueue<Dictionary<string, object>>();
        readonly object _connLock = new object();
        Thread _thread;
        // One flag object per started thread, so a thread that outlived Stop()'s join timeout
        // can never be revived by a later Start().
        sealed class RunFlag { public volatile bool Stop; }
        RunFlag _flag = new RunFlag { Stop = true };
        ZmtpConnection _conn;
        SfbridgeFrame _latest;
        string _lastStream;
        long _lastSeq = -1;
        int _state = (int)SfbridgeConnectionState.Disconnected;
        bool _warnedVersion;

        /// <summary>Delay before the first reconnect attempt; doubled on each failure.</summary>
        public int ReconnectMinMs = 100;
        /// <summary>Upper bound of the reconnect delay.</summary>
        public int ReconnectMaxMs = 2000;
        /// <summary>TCP connect + handshake timeout.</summary>
        public int ConnectTimeoutMs = 2000;
        /// <summary>With no bytes from the daemon for this long, send a ZMTP PING.</summary>
        public int HeartbeatMs = 1500;
        /// <summary>With no bytes at all for this long, drop the connection and reconnect (the daemon
        /// sends a stats event every second, so silence means it is gone). 0 disables.</summary>
        public int IdleTimeoutMs = 5000;
        /// <summary>Events kept when nobody dequeues them.</summary>
        public int MaxQueuedEvents = 256;

        /// <summary>Raised on the background thread for every new frame (after the seq filter).</summary>
        public event Action<SfbridgeFrame> FrameReceived;
        /// <summary>Raised on the background thread for every event map.</summary>
        public event Action<Dictionary<string, object>> EventReceived;
        /// <summary>Raised on the background thread when the connection state changes.</summary>
        public event Action<SfbridgeConnectionState> StateChanged;
        /// <summary>Raised on the background thread with diagnostics (connect failures, bad messages).</summary>
        public event Action<string> Log;

        long _framesReceived, _framesSkipped, _connects, _badMessages, _eventsReceived;

        /// <summary>Frames accepted (not counting repeated seq).</summary>
        public long FramesReceived { get { return Interlocked.Read(ref _framesReceived); } }
        /// <summary>Frames replaced by a newer one before anybody took them.</summary>
        public long FramesSkipped { get { return Interlocked.Read(ref _framesSkipped); } }
        /// <summary>Successful connections (1 + reconnects).</summary>
        public long Connects { get { return Interlocked.Read(ref _connects); } }
        public long BadMessages { get { return Interlocked.Read(ref _badMessages); } }
        public long EventsReceived { get { return Interlocked.Read(ref _eventsReceived); } }
        public SfbridgeConnectionState State { get { return (SfbridgeConnectionState)_state; } }
        public string Endpoint { get { return _endpointText; } }
        public SfbridgeFormat Format { get { return _format; } }

        /// <param name="endpoint">the daemon's stream endpoint, e.g. tcp://127.0.0.1:5556</param>
        /// <param name="format">the frame topic to subscribe to</param>
        /// <param name="events">also subscribe to the "event" topic</param>
        public SfbridgeSubscriber(string endpoint, SfbridgeFormat format = SfbridgeFormat.Jpeg, bool events = true)
        {
            _endpoint = ZmtpEndpoint.Parse(endpoint);
            _endpointText = endpoint;
            _format = format;
            _events = events;
        }

        public static string Topic(SfbridgeFormat f) { return f == SfbridgeFormat.Rgb24 ? "rgb24" : "jpeg"; }

        /// <summary>Starts the background thread (idempotent).</summary>
        public void Start()
        {
            if (_thread != null) return;
            var flag = new RunFlag();
            _flag = flag;
            _thread = new Thread(() => Run(flag));
            _thread.IsBackground = true; // never keeps a process (or the Unity editor) alive
            _thread.Name = "sfbridge-stream";
            _thread.Start();
        }

        /// <summary>Takes the newest frame received since the last call, or null. Older frames that
        /// arrived in between were dropped (counted in FramesSkipped).</summary>
        public SfbridgeFrame TryTakeLatest()
        {
            return Interlocked.Exchange(ref _latest, null);
        }

        /// <summary>Blocks up to timeoutMs for a new frame (handy for console tools and tests).</summary>
        public SfbridgeFrame WaitFrame(int timeoutMs)
        {
            int start = Environment.TickCount;
            while (true)
            {
                SfbridgeFrame f = TryTakeLatest();
                if (f != null) return f;
                if (unchecked(Environment.TickCount - start) >= timeoutMs) return null;
                Thread.Sleep(2);
            }
        }

        public bool TryDequeueEvent(out Dictionary<string, object> ev)
        {
            return _eventQueue.TryDequeue(out ev);
        }

        void SetState(SfbridgeConnectionState s)
        {
            int old = Interlocked.Exchange(ref _state, (int)s);
            if (old != (int)s)
            {
                var h = StateChanged;
                if (h != null) Safe(() => h(s));
            }
        }

        void Say(string msg)
        {
            var h = Log;
            if (h != null) Safe(() => h(msg));
        }

        void Safe(Action a)
        {
            try { a(); }
            catch (Exception e)
            {
                // A throwing user handler must not kill the receive thread.
                if (Log != null) { try { Log("handler threw: " + e); } catch (Exception) { } }
            }
        }

        void Run(RunFlag flag)
        {
            int delay = ReconnectMinMs;
            while (!flag.Stop)
            {
                SetState(SfbridgeConnectionState.Connecting);
                ZmtpConnection c = null;
                try
                {
                    c = ZmtpConnection.Connect(_endpoint, "SUB", ConnectTimeoutMs);
                    lock (_connLock)
                    {
                        if (flag.Stop) { c.Dispose(); break; }
                        _conn = c;
                    }
                    c.Subscribe(Topic(_format));
                    if (_events) c.Subscribe("event");
                    Interlocked.Increment(ref _connects);
                    SetState(SfbridgeConnectionState.Connected);
                    delay = ReconnectMinMs;
                    ReceiveLoop(c, flag);
                }
                catch (Exception e)
                {
                    if (!flag.Stop) Say("stream " + _endpointText + ": " + e.GetType().Name + ": " + e.Message);
                }
                finally
                {
                    lock (_connLock) { if (_conn == c) _conn = null; }
                    if (c != null) c.Dispose();
                }
                if (flag.Stop) break;
                SetState(SfbridgeConnectionState.Disconnected);
                SleepUnlessStopped(flag, delay);
                delay = Math.Min(ReconnectMaxMs, delay * 2);
            }
            SetState(SfbridgeConnectionState.Disconnected);
        }

        void SleepUnlessStopped(RunFlag flag, int ms)
        {
            int start = Environment.TickCount;
            while (!flag.Stop && unchecked(Environment.TickCount - start) < ms) Thread.Sleep(Math.Min(20, ms));
        }

        void ReceiveLoop(ZmtpConnection c, RunFlag flag)
        {
            bool pinged = false;
            while (!flag.Stop)
            {
                if (!c.WaitReadable(100))
                {
                    int idle = unchecked(Environment.TickCount - c.LastReceiveTick);
                    if (IdleTimeoutMs > 0 && idle > IdleTimeoutMs)
                        throw new TimeoutException("no data from the daemon for " + idle + " ms");
                    if (HeartbeatMs > 0 && idle > HeartbeatMs && !pinged)
                    {
                        c.SendPing();
                        pinged = true;
                    }
                    continue;
                }
                pinged = false;
                // Readable: a whole message follows (the socket receive timeout guards a stall).
                List<byte[]> parts = c.Receive();
                Handle(parts);
            }
        }

        void Handle(List<byte[]> parts)
        {
            if (parts.Count != 3)
            {
                Interlocked.Increment(ref _badMessages);
                Say("ignoring a stream message with " + parts.Count + " frames (expected 3)");
                return;
            }
            string topic = Encoding.ASCII.GetString(parts[0]);
            Dictionary<string, object> header;
            try
            {
                header = MsgPackReader.UnpackMap(parts[1]);
            }
            catch (MsgPackException e)
            {
                Interlocked.Increment(ref _badMessages);
                Say("ignoring a message with a bad header on topic '" + topic + "': " + e.Message);
                return;
            }
            CheckVersion(header);
            if (topic == "event")
            {
                Interlocked.Increment(ref _eventsReceived);
                Dictionary<string, object> dropped;
                while (_eventQueue.Count >= MaxQueuedEvents && _eventQueue.TryDequeue(out dropped)) { }
                _eventQueue.Enqueue(header);
                var h = EventReceived;
                if (h != null) Safe(() => h(header));
                return;
            }
            if (topic != Topic(_format)) return; // e.g. a prefix match on a future topic
            SfbridgeFrame f;
            try
            {
                f = SfbridgeFrame.FromHeader(header, parts[2], topic);
            }
            catch (MsgPackException e)
            {
                Interlocked.Increment(ref _badMessages);
                Say("ignoring a frame: " + e.Message);
                return;
            }
            if (f.Format == "rgb24" && f.Payload.Length != f.Width * f.Height * 3)
            {
                Interlocked.Increment(ref _badMessages);
                Say("ignoring an rgb24 frame of " + f.Payload.Length + " bytes for " + f.Width + "x" + f.Height);
                return;
            }
            // Drop repeats (last-value cache on reconnect) and anything older than what we have.
            // seq restarts with a new daemon, whose stream id differs.
            if (f.Stream == _lastStream && f.Seq <= _lastSeq) return;
            _lastStream = f.Stream;
            _lastSeq = f.Seq;
            Interlocked.Increment(ref _framesReceived);
            if (Interlocked.Exchange(ref _latest, f) != null) Interlocked.Increment(ref _framesSkipped);
            var fh = FrameReceived;
            if (fh != null) Safe(() => fh(f));
        }

        void CheckVersion(Dictionary<string, object> m)
        {
            long v = MsgPackMap.GetLong(m, "v", ProtocolVersion);
            if (v != ProtocolVersion && !_warnedVersion)
            {
                _warnedVersion = true;
                Say("warning: daemon speaks protocol version " + v + ", this client knows " + ProtocolVersion + "; carrying on");
            }
        }

        /// <summary>Stops the thread (joined up to joinTimeoutMs) and closes the socket.</summary>
        public void Stop(int joinTimeoutMs = 1000)
        {
            _flag.Stop = true;
            lock (_connLock)
            {
                if (_conn != null) _conn.Dispose(); // unblocks a pending read
            }
            Thread t = _thread;
            if (t != null && t != Thread.CurrentThread)
            {
                if (!t.Join(joinTimeoutMs)) Say("stream thread did not stop within " + joinTimeoutMs + " ms");
            }
            _thread = null;
        }

        public void Dispose() { Stop(); }
    }
}
