// sfbridge Unity client - control channel (DEALER socket) with timeout + retry ("Lazy Pirate",
// docs/PROTOCOL.md 1.2). Synchronous calls for tools/tests, and *Async calls that run on one
// worker thread so a game's main thread never blocks. No UnityEngine references.

using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Security.Cryptography;
using System.Threading;
using System.Threading.Tasks;

namespace Sfbridge
{
    /// <summary>Base class of the errors this client reports.</summary>
    public class SfbridgeException : Exception
    {
        public SfbridgeException(string message) : base(message) { }
        public SfbridgeException(string message, Exception inner) : base(message, inner) { }
    }

    /// <summary>No reply after all retries: the daemon is not running (or not at this endpoint).</summary>
    public class SfbridgeTimeoutException : SfbridgeException
    {
        public SfbridgeTimeoutException(string message, Exception inner) : base(message, inner) { }
    }

    /// <summary>The daemon answered with ok=false (Code is one of PROTOCOL.md 2.4, e.g. invalid_value).</summary>
    public class SfbridgeRequestException : SfbridgeException
    {
        public readonly string Code;
        public readonly string ErrorMessage;
        public readonly string Op;

        public SfbridgeRequestException(string op, string code, string message)
            : base("sfbridge '" + op + "' failed: " + code + ": " + message)
        {
            Op = op; Code = code; ErrorMessage = message;
        }
    }

    /// <summary>A decoded reply map.</summary>
    public sealed class SfbridgeReply
    {
        public Dictionary<string, object> Raw;
        public object Id;
        public bool Ok;
        public Dictionary<string, object> Result;
        public string ErrorCode;
        public string ErrorMessage;
        public int Version;

        public static SfbridgeReply FromMap(Dictionary<string, object> m)
        {
            var r = new SfbridgeReply();
            r.Raw = m;
            object id;
            m.TryGetValue("id", out id);
            r.Id = id;
            r.Ok = MsgPackMap.GetBool(m, "ok", false);
            r.Result = MsgPackMap.GetMap(m, "result") ?? new Dictionary<string, object>();
            Dictionary<string, object> err = MsgPackMap.GetMap(m, "error");
            if (err != null)
            {
                r.ErrorCode = MsgPackMap.GetString(err, "code", "");
                r.ErrorMessage = MsgPackMap.GetString(err, "message", "");
            }
            else if (!r.Ok)
            {
                r.ErrorCode = "bad_reply";
                r.ErrorMessage = "reply has ok=false and no error";
            }
            r.Version = (int)MsgPackMap.GetLong(m, "v", 0);
            return r;
        }

        /// <summary>Throws SfbridgeRequestException when the reply is an error.</summary>
        public SfbridgeReply ThrowIfError(string op)
        {
            if (!Ok) throw new SfbridgeRequestException(op, ErrorCode, ErrorMessage);
            return this;
        }

        /// <summary>result.state_id (prompt, seed, steps, reset), or -1.</summary>
        public long StateId { get { return MsgPackMap.GetLong(Result, "state_id", -1); } }
        /// <summary>result.applies_at_block, or -1.</summary>
        public long AppliesAtBlock { get { return MsgPackMap.GetLong(Result, "applies_at_block", -1); } }
        /// <summary>result.scheduled: the change waits for a later block than the next one.</summary>
        public bool Scheduled { get { return MsgPackMap.GetBool(Result, "scheduled", false); } }
    }

    /// <summary>Control client. Thread-safe: requests are serialized on one connection.</summary>
    public sealed class SfbridgeControl : IDisposable
    {
        readonly ZmtpEndpoint _endpoint;
        readonly string _endpointText;
        readonly object _lock = new object();
        readonly byte[] _routingId;
        ZmtpConnection _conn;
        long _nextId;
        volatile bool _disposed;

        // Async worker: one thread, FIFO.
        readonly BlockingCollection<Action> _work = new BlockingCollection<Action>();
        Thread _worker;

        /// <summary>Time to wait for each reply (PROTOCOL.md recommends 2000 ms).</summary>
        public int TimeoutMs = 2000;
        /// <summary>Attempts per request (PROTOCOL.md: at most 3).</summary>
        public int Attempts = 3;

        /// <summary>Raised (on the calling/worker thread) for diagnostics, e.g. retries.</summary>
        public event Action<string> Log;

        public string Endpoint { get { return _endpointText; } }

        /// <summary>The routing id this client's DEALER announces on every connection (READY
        /// Identity): "sfb" + 13 random bytes, one per instance. Keeping it across the Lazy Pirate
        /// reconnects lets the daemon answer a retry of a request it already handled from memory
        /// instead of applying it twice (PROTOCOL.md 2.1.1). A copy; the id never changes.</summary>
        public byte[] RoutingId { get { return (byte[])_routingId.Clone(); } }

        /// <param name="endpoint">the daemon's control endpoint, e.g. tcp://127.0.0.1:5555</param>
        public SfbridgeControl(string endpoint)
        {
            _endpoint = ZmtpEndpoint.Parse(endpoint);
            _endpointText = endpoint;
            _nextId = Environment.TickCount & 0xffff;
            _routingId = NewRoutingId();
        }

        /// <summary>"sfb" + 13 random bytes, as the Python client makes it: the leading 's' keeps the
        /// first byte non-zero (ZMTP reserves a zero first byte), 104 random bits keep two clients from
        /// ever sharing an id (a shared id would hand one client's replies to the other).</summary>
        static byte[] NewRoutingId()
        {
            var id = new byte[16];
            id[0] = (byte)'s'; id[1] = (byte)'f'; id[2] = (byte)'b';
            var random = new byte[13];
            using (RandomNumberGenerator rng = RandomNumberGenerator.Create()) rng.GetBytes(random);
            Buffer.BlockCopy(random, 0, id, 3, random.Length);
            ZmtpConnection.CheckIdentity(id);
            return id;
        }

        void Say(string m)
        {
            var h = Log;
            if (h != null) { try { h(m); } catch (Exception) { } }
        }

        void Drop()
        {
            if (_conn != null) { _conn.Dispose(); _conn = null; }
        }

        /// <summary>Sends a request map (op + arguments; "id" is added) and returns the reply.
        /// Retries with a fresh connection after each timeout. Throws SfbridgeTimeoutException when
        /// the daemon does not answer. Does NOT throw on ok=false (see Call for that).</summary>
        public SfbridgeReply Request(Dictionary<string, object> request)
        {
            if (request == null) throw new ArgumentNullException("request");
            if (!request.ContainsKey("op")) throw new ArgumentException("request needs an 'op'");
            lock (_lock)
            {
                if (_disposed) throw new ObjectDisposedException("SfbridgeControl");
                long id = ++_nextId;
                var req = new Dictionary<string, object>(request);
                req["id"] = id;
                byte[] body = MsgPackWriter.Pack(req);
                if (body.Length > 65536)
                    throw new SfbridgeRequestException((string)request["op"], "too_large", "request is " + body.Length + " bytes (limit 65536)");
                Exception last = null;
                int attempts = Math.Max(1, Attempts);
                for (int attempt = 1; attempt <= attempts && !_disposed; attempt++)
                {
                    int start = Environment.TickCount;
                    try
                    {
                        if (_conn == null) _conn = ZmtpConnection.Connect(_endpoint, "DEALER", TimeoutMs, _routingId);
                        _conn.Send(body);
                        while (true)
                        {
                            int left = TimeoutMs - unchecked(Environment.TickCount - start);
                            if (left <= 0 || !_conn.WaitReadable(left))
                                throw new TimeoutException("no reply within " + TimeoutMs + " ms");
                            List<byte[]> parts = _conn.Receive();
                            // DEALER: [body]; be lenient with a REQ-style empty delimiter.
                            byte[] reply = parts[parts.Count - 1];
                            Dictionary<string, object> m;
                            try { m = MsgPackReader.UnpackMap(reply); }
                            catch (MsgPackException e) { Say("ignoring an undecodable reply: " + e.Message); continue; }
                            object rid;
                            m.TryGetValue("id", out rid);
                            // Replies to earlier (timed-out) requests are skipped by id.
                            if (rid != null && !(rid is long && (long)rid == id)) continue;
                            return SfbridgeReply.FromMap(m);
                        }
                    }
                    catch (Exception e)
                    {
                        if (e is ObjectDisposedException && _disposed) throw;
                        last = e;
                        Drop(); // Lazy Pirate: a new socket (same routing id) for the next attempt
                        Say("control " + _endpointText + " attempt " + attempt + "/" + attempts + " failed: " + e.Message);
                        if (attempt < attempts && !_disposed)
                        {
                            // A refused connection fails at once; wait a little so a restarting daemon can come up.
                            int spent = unchecked(Environment.TickCount - start);
                            int pause = Math.Min(250, Math.Max(0, TimeoutMs - spent));
                            if (pause > 0) Thread.Sleep(pause);
                        }
                    }
                }
                throw new SfbridgeTimeoutException(
                    "sfbridge daemon did not answer '" + request["op"] + "' at " + _endpointText + " after " + attempts +
                    " attempts of " + TimeoutMs + " ms (is `sfbridge serve` running?)", last);
            }
        }

        /// <summary>Like Request, but throws SfbridgeRequestException on ok=false.</summary>
        public SfbridgeReply Call(Dictionary<string, object> request)
        {
            return Request(request).ThrowIfError(Convert.ToString(request["op"]));
        }

        static Dictionary<string, object> Op(string op)
        {
            var d = new Dictionary<string, object>();
            d["op"] = op;
            return d;
        }

        // ---- typed synchronous calls (block the calling thread: use the Async variants in games) ----

        public SfbridgeReply Ping() { return Call(Op("ping")); }

        public SfbridgeReply Status() { return Call(Op("status")); }

        /// <param name="transition">"cut" or "blend"</param>
        /// <param name="blendBlocks">1..64, used with "blend"</param>
        public SfbridgeReply Prompt(string text, string transition = "cut", int blendBlocks = 4)
        {
            return Call(PromptRequest(text, transition, blendBlocks));
        }

        /// <summary>A prompt change with options: transition, blend blocks and path (Interp), Recache, and
        /// when it lands (At). Bad options throw ArgumentException before anything is sent.</summary>
        public SfbridgeReply Prompt(string text, SfbridgePromptOptions options)
        {
            return Call(SfbridgeSteering.PromptRequest(text, options));
        }

        /// <summary>A weighted prompt list (1..8 entries), combined by options.Mix.</summary>
        public SfbridgeReply WeightedPrompt(IList<SfbridgeWeightedPrompt> prompts, SfbridgePromptOptions options = null)
        {
            return Call(SfbridgeSteering.WeightedPromptRequest(prompts, options));
        }

        public SfbridgeReply Seed(long seed) { return Call(SeedRequest(seed)); }

        public SfbridgeReply Seed(long seed, SfbridgeSchedule at) { return Call(SfbridgeSteering.SeedRequest(seed, at)); }

        public SfbridgeReply Steps(int[] steps) { return Call(StepsRequest(steps)); }

        public SfbridgeReply Steps(int[] steps, SfbridgeSchedule at) { return Call(SfbridgeSteering.StepsRequest(steps, at)); }

        /// <summary>Drops a scheduled change (result.cancelled); code not_found when it is unknown or has landed.</summary>
        public SfbridgeReply Cancel(long stateId) { return Call(SfbridgeSteering.CancelRequest(stateId)); }

        /// <summary>Switches video-to-video on ("v2v") or "off" (input frames: SfbridgeInputSender).</summary>
        public SfbridgeReply Input(string mode, double strength = 0.7, bool motionAdaptive = false)
        {
            return Call(SfbridgeSteering.InputRequest(mode, strength, motionAdaptive, SfbridgeSchedule.Next));
        }

        public SfbridgeReply Input(string mode, double strength, bool motionAdaptive, SfbridgeSchedule at)
        {
            return Call(SfbridgeSteering.InputRequest(mode, strength, motionAdaptive, at));
        }

        public SfbridgeReply Pause() { return Call(Op("pause")); }

        public SfbridgeReply Resume() { return Call(Op("resume")); }

        /// <param name="prompt">optional new prompt (null keeps the current one)</param>
        /// <param name="seed">optional new seed (null keeps the current one)</param>
        public SfbridgeReply Reset(string prompt = null, long? seed = null) { return Call(ResetRequest(prompt, seed)); }

        public static Dictionary<string, object> PromptRequest(string text, string transition, int blendBlocks)
        {
            var d = Op("prompt");
            d["text"] = text ?? "";
            if (!string.IsNullOrEmpty(transition)) d["transition"] = transition;
            if (transition == "blend") d["blend_blocks"] = blendBlocks;
            return d;
        }

        public static Dictionary<string, object> SeedRequest(long seed)
        {
            var d = Op("seed");
            d["seed"] = seed;
            return d;
        }

        public static Dictionary<string, object> StepsRequest(int[] steps)
        {
            var d = Op("steps");
            var l = new List<object>();
            foreach (int s in steps) l.Add(s);
            d["steps"] = l;
            return d;
        }

        public static Dictionary<string, object> ResetRequest(string prompt, long? seed)
        {
            var d = Op("reset");
            if (prompt != null) d["prompt"] = prompt;
            if (seed.HasValue) d["seed"] = seed.Value;
            return d;
        }

        // ---- asynchronous calls (never block the caller) ----

        /// <summary>Runs Call(request) on the worker thread. The task faults with
        /// SfbridgeRequestException (ok=false) or SfbridgeTimeoutException (no daemon).</summary>
        public Task<SfbridgeReply> CallAsync(Dictionary<string, object> request)
        {
            var tcs = new TaskCompletionSource<SfbridgeReply>();
            if (_disposed)
            {
                tcs.SetException(new ObjectDisposedException("SfbridgeControl"));
                return tcs.Task;
            }
            EnsureWorker();
            try
            {
                _work.Add(() =>
                {
                    try { tcs.TrySetResult(Call(request)); }
                    catch (Exception e) { tcs.TrySetException(e); }
                });
            }
            catch (InvalidOperationException)
            {
                tcs.TrySetException(new ObjectDisposedException("SfbridgeControl"));
            }
            return tcs.Task;
        }

        /// <summary>Callback flavour of CallAsync: exactly one of reply/error is non-null. The
        /// callback runs on the worker thread (marshal to your main thread yourself, as
        /// SfbridgeStream does in Unity).</summary>
        public void CallAsync(Dictionary<string, object> request, Action<SfbridgeReply, Exception> done)
        {
            CallAsync(request).ContinueWith(t =>
            {
                if (done == null) return;
                if (t.IsFaulted) done(null, t.Exception.InnerException ?? t.Exception);
                else if (t.IsCanceled) done(null, new OperationCanceledException());
                else done(t.Result, null);
            }, TaskContinuationOptions.ExecuteSynchronously);
        }

        public Task<SfbridgeReply> PingAsync() { return CallAsync(Op("ping")); }
        public Task<SfbridgeReply> StatusAsync() { return CallAsync(Op("status")); }
        public Task<SfbridgeReply> PromptAsync(string text, string transition = "cut", int blendBlocks = 4)
        {
            return CallAsync(PromptRequest(text, transition, blendBlocks));
        }
        public Task<SfbridgeReply> PromptAsync(string text, SfbridgePromptOptions options)
        {
            return CallAsync(SfbridgeSteering.PromptRequest(text, options));
        }
        public Task<SfbridgeReply> WeightedPromptAsync(IList<SfbridgeWeightedPrompt> prompts, SfbridgePromptOptions options = null)
        {
            return CallAsync(SfbridgeSteering.WeightedPromptRequest(prompts, options));
        }
        public Task<SfbridgeReply> SeedAsync(long seed) { return CallAsync(SeedRequest(seed)); }
        public Task<SfbridgeReply> SeedAsync(long seed, SfbridgeSchedule at) { return CallAsync(SfbridgeSteering.SeedRequest(seed, at)); }
        public Task<SfbridgeReply> StepsAsync(int[] steps) { return CallAsync(StepsRequest(steps)); }
        public Task<SfbridgeReply> StepsAsync(int[] steps, SfbridgeSchedule at) { return CallAsync(SfbridgeSteering.StepsRequest(steps, at)); }
        public Task<SfbridgeReply> CancelAsync(long stateId) { return CallAsync(SfbridgeSteering.CancelRequest(stateId)); }
        public Task<SfbridgeReply> PauseAsync() { return CallAsync(Op("pause")); }
        public Task<SfbridgeReply> ResumeAsync() { return CallAsync(Op("resume")); }
        public Task<SfbridgeReply> ResetAsync(string prompt = null, long? seed = null)
        {
            return CallAsync(ResetRequest(prompt, seed));
        }

        void EnsureWorker()
        {
            lock (_work)
            {
                if (_worker != null) return;
                _worker = new Thread(WorkerLoop);
                _worker.IsBackground = true;
                _worker.Name = "sfbridge-control";
                _worker.Start();
            }
        }

        void WorkerLoop()
        {
            try
            {
                foreach (Action a in _work.GetConsumingEnumerable())
                {
                    try { a(); } catch (Exception e) { Say("control worker: " + e); }
                }
            }
            catch (ObjectDisposedException) { }
        }

        /// <summary>Closes the socket and stops the worker (joined up to joinTimeoutMs). Pending
        /// async requests fail with ObjectDisposedException.</summary>
        public void Close(int joinTimeoutMs = 1000)
        {
            if (_disposed) return;
            _disposed = true;
            _work.CompleteAdding();
            // Unblock a request in flight: closing its socket makes the wait fail at once.
            ZmtpConnection c = _conn;
            if (c != null) c.Dispose();
            Thread w;
            lock (_work) { w = _worker; }
            if (w != null && w != Thread.CurrentThread) w.Join(joinTimeoutMs);
            lock (_lock) { Drop(); }
            Action pending;
            while (_work.TryTake(out pending))
            {
                try { pending(); } catch (Exception) { }
            }
        }

        public void Dispose() { Close(); }
    }
}
