// sfbridge Unity client - a minimal ZeroMQ (ZMTP 3.x, NULL mechanism) peer over System.Net.Sockets.
//
// Enough of RFC 23/37 for the sfbridge protocol (docs/PROTOCOL.md section 1.1): greeting, READY
// handshake, short and LONG frames, multipart messages, PING -> PONG, SUB subscriptions. One
// ZmtpConnection is one TCP connection; reconnecting (backoff) is the caller's job (see
// SfbridgeSubscriber / SfbridgeControl). No UnityEngine references, C# 7.3 syntax.

using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Sfbridge
{
    /// <summary>A protocol-level failure on a ZMTP connection (bad greeting, ERROR command, ...).</summary>
    public class ZmtpException : IOException
    {
        public ZmtpException(string message) : base(message) { }
        public ZmtpException(string message, Exception inner) : base(message, inner) { }
    }

    /// <summary>A parsed "tcp://host:port" endpoint.</summary>
    public sealed class ZmtpEndpoint
    {
        public readonly string Host;
        public readonly int Port;

        public ZmtpEndpoint(string host, int port) { Host = host; Port = port; }

        public static ZmtpEndpoint Parse(string endpoint)
        {
            if (string.IsNullOrEmpty(endpoint)) throw new ArgumentException("empty endpoint");
            if (endpoint.StartsWith("ipc://", StringComparison.Ordinal))
                throw new NotSupportedException(
                    "ipc:// endpoints are not supported by the C# client; start the daemon with a tcp:// endpoint");
            const string prefix = "tcp://";
            string rest = endpoint.StartsWith(prefix, StringComparison.Ordinal) ? endpoint.Substring(prefix.Length) : endpoint;
            int colon = rest.LastIndexOf(':');
            if (colon <= 0 || colon == rest.Length - 1)
                throw new ArgumentException("endpoint must look like tcp://HOST:PORT, got '" + endpoint + "'");
            string host = rest.Substring(0, colon);
            if (host.StartsWith("[", StringComparison.Ordinal) && host.EndsWith("]", StringComparison.Ordinal))
                host = host.Substring(1, host.Length - 2);
            if (host == "*" || host == "0.0.0.0") host = "127.0.0.1";
            int port;
            if (!int.TryParse(rest.Substring(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out port)
                || port <= 0 || port > 65535)
                throw new ArgumentException("bad port in endpoint '" + endpoint + "'");
            return new ZmtpEndpoint(host, port);
        }

        public override string ToString() { return "tcp://" + Host + ":" + Port; }
    }

    /// <summary>One ZMTP 3.x connection (client side, NULL mechanism).</summary>
    public sealed class ZmtpConnection : IDisposable
    {
        const byte FlagMore = 0x01;
        const byte FlagLong = 0x02;
        const byte FlagCommand = 0x04;

        /// <summary>Refuse frames larger than this (protects against garbage on the wire).</summary>
        public long MaxFrameSize = 256L * 1024 * 1024;

        readonly Socket _socket;
        readonly NetworkStream _stream;
        readonly object _sendLock = new object();
        readonly byte[] _hdr = new byte[9];
        volatile bool _disposed;

        /// <summary>Socket-Type announced by the peer in its READY command (e.g. "XPUB", "ROUTER").</summary>
        public string PeerSocketType { get; private set; }
        /// <summary>Peer's ZMTP version from its greeting, e.g. 3.1.</summary>
        public int PeerMajor { get; private set; }
        public int PeerMinor { get; private set; }
        /// <summary>Environment.TickCount (ms) when the last bytes arrived.</summary>
        public int LastReceiveTick { get; private set; }

        ZmtpConnection(Socket socket)
        {
            _socket = socket;
            _stream = new NetworkStream(socket, false);
        }

        /// <summary>Connects, exchanges greetings and READY commands. Throws SocketException,
        /// IOException or ZmtpException on failure (the socket is closed then).</summary>
        /// <param name="identity">optional routing id sent as the READY command's Identity property
        /// (ZMTP 3.0): 1 to 255 bytes, first byte not zero (RFC 23/37 reserves a leading zero for ids a
        /// ROUTER makes up). A DEALER that reuses one identity on every connection lets the daemon's
        /// ROUTER recognise a retry on a new socket (PROTOCOL.md 2.1.1). null: no Identity property,
        /// the peer makes up an id per connection. A bad identity throws ArgumentException before
        /// anything is connected.</param>
        public static ZmtpConnection Connect(ZmtpEndpoint ep, string socketType, int timeoutMs, byte[] identity = null)
        {
            CheckIdentity(identity);
            Socket s = ConnectSocket(ep, timeoutMs);
            var c = new ZmtpConnection(s);
            try
            {
                s.ReceiveTimeout = timeoutMs;
                s.SendTimeout = timeoutMs;
                c.Handshake(socketType, identity);
                c.LastReceiveTick = Environment.TickCount;
                return c;
            }
            catch
            {
                c.Dispose();
                throw;
            }
        }

        /// <summary>Throws ArgumentException unless identity is null or a valid ZMTP routing id
        /// (1 to 255 bytes, first byte not zero).</summary>
        public static void CheckIdentity(byte[] identity)
        {
            if (identity == null) return;
            if (identity.Length < 1 || identity.Length > 255)
                throw new ArgumentException("a ZMTP identity is 1 to 255 bytes, got " + identity.Length, "identity");
            if (identity[0] == 0)
                throw new ArgumentException("a ZMTP identity must not start with a zero byte (reserved for ids the peer makes up)", "identity");
        }

        static Socket ConnectSocket(ZmtpEndpoint ep, int timeoutMs)
        {
            IPAddress addr;
            if (!IPAddress.TryParse(ep.Host, out addr))
            {
                IPAddress[] all = Dns.GetHostAddresses(ep.Host);
                if (all.Length == 0) throw new SocketException((int)SocketError.HostNotFound);
                addr = all[0];
                foreach (IPAddress a in all)
                    if (a.AddressFamily == AddressFamily.InterNetwork) { addr = a; break; }
            }
            var s = new Socket(addr.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                s.NoDelay = true;
                IAsyncResult ar = s.BeginConnect(new IPEndPoint(addr, ep.Port), null, null);
                if (!ar.AsyncWaitHandle.WaitOne(timeoutMs))
                    throw new TimeoutException("connect to " + ep + " timed out after " + timeoutMs + " ms");
                s.EndConnect(ar);
                return s;
            }
            catch
            {
                s.Close();
                throw;
            }
        }

        void Handshake(string socketType, byte[] identity)
        {
            // Greeting: signature, version 3.0, mechanism NULL, as-server 0, filler.
            var g = new byte[64];
            g[0] = 0xff;
            g[9] = 0x7f;
            g[10] = 3;
            g[11] = 0;
            byte[] mech = Encoding.ASCII.GetBytes("NULL");
            Buffer.BlockCopy(mech, 0, g, 12, mech.Length);
            _stream.Write(g, 0, 64);

            var peer = new byte[64];
            ReadExact(peer, 0, 64);
            if (peer[0] != 0xff || peer[9] != 0x7f)
                throw new ZmtpException("peer is not a ZeroMQ (ZMTP) endpoint: bad signature");
            PeerMajor = peer[10];
            PeerMinor = peer[11];
            if (PeerMajor < 3) throw new ZmtpException("peer speaks ZMTP " + PeerMajor + "." + PeerMinor + "; 3.x is required");
            string peerMech = Encoding.ASCII.GetString(peer, 12, 20).TrimEnd('\0');
            if (peerMech != "NULL")
                throw new ZmtpException("peer uses security mechanism '" + peerMech + "'; only NULL is supported");

            // READY with Socket-Type (and Identity when the caller keeps one routing id across connections).
            var body = new MemoryStream();
            body.WriteByte(5);
            WriteAscii(body, "READY");
            WriteProperty(body, "Socket-Type", Encoding.ASCII.GetBytes(socketType));
            if (identity != null) WriteProperty(body, "Identity", identity);
            SendFrame(body.ToArray(), false, true);

            // The peer's READY (or ERROR).
            bool more, command;
            byte[] cmd = ReadFrame(out more, out command);
            if (!command) throw new ZmtpException("expected a READY command from the peer, got a message frame");
            string name = CommandName(cmd);
            if (name == "ERROR") throw new ZmtpException("peer refused the handshake: " + ErrorReason(cmd));
            if (name != "READY") throw new ZmtpException("expected READY from the peer, got " + name);
            Dictionary<string, byte[]> props = ParseProperties(cmd, 1 + cmd[0]);
            byte[] st;
            PeerSocketType = props.TryGetValue("Socket-Type", out st) ? Encoding.ASCII.GetString(st) : "";
        }

        static void WriteAscii(Stream s, string text)
        {
            byte[] b = Encoding.ASCII.GetBytes(text);
            s.Write(b, 0, b.Length);
        }

        static void WriteProperty(Stream s, string name, byte[] value)
        {
            s.WriteByte((byte)name.Length);
            WriteAscii(s, name);
            int n = value.Length;
            s.WriteByte((byte)(n >> 24)); s.WriteByte((byte)(n >> 16)); s.WriteByte((byte)(n >> 8)); s.WriteByte((byte)n);
            s.Write(value, 0, n);
        }

        static string CommandName(byte[] cmd)
        {
            if (cmd.Length < 1 || cmd[0] + 1 > cmd.Length) throw new ZmtpException("malformed ZMTP command");
            return Encoding.ASCII.GetString(cmd, 1, cmd[0]);
        }

        static string ErrorReason(byte[] cmd)
        {
            int p = 1 + cmd[0];
            if (p >= cmd.Length) return "(no reason)";
            int n = Math.Min(cmd[p], cmd.Length - p - 1);
            return Encoding.ASCII.GetString(cmd, p + 1, n);
        }

        static Dictionary<string, byte[]> ParseProperties(byte[] cmd, int p)
        {
            var d = new Dictionary<string, byte[]>();
            while (p < cmd.Length)
            {
                int nl = cmd[p++];
                if (p + nl + 4 > cmd.Length) throw new ZmtpException("malformed READY properties");
                string name = Encoding.ASCII.GetString(cmd, p, nl);
                p += nl;
                long vl = ((long)cmd[p] << 24) | ((long)cmd[p + 1] << 16) | ((long)cmd[p + 2] << 8) | cmd[p + 3];
                p += 4;
                if (p + vl > cmd.Length) throw new ZmtpException("malformed READY property value");
                var v = new byte[vl];
                Buffer.BlockCopy(cmd, p, v, 0, (int)vl);
                p += (int)vl;
                d[name] = v;
            }
            return d;
        }

        void ReadExact(byte[] buf, int off, int count)
        {
            while (count > 0)
            {
                int n = _stream.Read(buf, off, count);
                if (n <= 0) throw new EndOfStreamException("connection closed by the peer");
                off += n;
                count -= n;
                LastReceiveTick = Environment.TickCount;
            }
        }

        byte[] ReadFrame(out bool more, out bool command)
        {
            ReadExact(_hdr, 0, 1);
            byte flags = _hdr[0];
            if ((flags & 0xf8) != 0) throw new ZmtpException("bad ZMTP frame flags 0x" + flags.ToString("x2"));
            long size;
            if ((flags & FlagLong) != 0)
            {
                ReadExact(_hdr, 1, 8);
                size = 0;
                for (int i = 1; i <= 8; i++) size = (size << 8) | _hdr[i];
            }
            else
            {
                ReadExact(_hdr, 1, 1);
                size = _hdr[1];
            }
            if (size < 0 || size > MaxFrameSize)
                throw new ZmtpException("ZMTP frame of " + size + " bytes exceeds the limit of " + MaxFrameSize);
            var body = new byte[size];
            ReadExact(body, 0, (int)size);
            more = (flags & FlagMore) != 0;
            command = (flags & FlagCommand) != 0;
            return body;
        }

        static void EncodeFrame(MemoryStream o, byte[] body, bool more, bool command)
        {
            byte flags = (byte)((more ? FlagMore : 0) | (command ? FlagCommand : 0));
            int n = body.Length;
            if (n > 255)
            {
                o.WriteByte((byte)(flags | FlagLong));
                ulong size = (ulong)n;
                for (int i = 7; i >= 0; i--) o.WriteByte((byte)(size >> (8 * i)));
            }
            else
            {
                o.WriteByte(flags);
                o.WriteByte((byte)n);
            }
            o.Write(body, 0, n);
        }

        void SendFrame(byte[] body, bool more, bool command)
        {
            var o = new MemoryStream(body.Length + 9);
            EncodeFrame(o, body, more, command);
            lock (_sendLock) _stream.Write(o.GetBuffer(), 0, (int)o.Length);
        }

        /// <summary>Sends a multipart message (all frames but the last carry MORE) in one write.</summary>
        public void Send(IList<byte[]> frames)
        {
            if (frames == null || frames.Count == 0) throw new ArgumentException("a message needs at least one frame");
            var o = new MemoryStream();
            for (int i = 0; i < frames.Count; i++) EncodeFrame(o, frames[i] ?? new byte[0], i < frames.Count - 1, false);
            lock (_sendLock) _stream.Write(o.GetBuffer(), 0, (int)o.Length);
        }

        /// <summary>Sends a one-frame message.</summary>
        public void Send(byte[] frame)
        {
            Send(new[] { frame });
        }

        /// <summary>SUB side: subscribes to a topic prefix ("" = everything).</summary>
        public void Subscribe(string topic)
        {
            byte[] t = Encoding.UTF8.GetBytes(topic ?? "");
            var b = new byte[t.Length + 1];
            b[0] = 1;
            Buffer.BlockCopy(t, 0, b, 1, t.Length);
            Send(b);
        }

        /// <summary>Sends a ZMTP 3.1 PING (peers at 3.1+ answer PONG; harmless otherwise).</summary>
        public void SendPing()
        {
            if (PeerMinor < 1) return;
            var b = new byte[] { 4, (byte)'P', (byte)'I', (byte)'N', (byte)'G', 0, 0 };
            SendFrame(b, false, true);
        }

        /// <summary>True when at least one byte can be read within timeoutMs (or the peer closed).</summary>
        public bool WaitReadable(int timeoutMs)
        {
            if (_disposed) throw new ObjectDisposedException("ZmtpConnection");
            if (_socket.Available > 0) return true;
            return _socket.Poll(Math.Max(0, timeoutMs) * 1000, SelectMode.SelectRead);
        }

        /// <summary>Upper bound of one blocking send (a stuck peer then throws instead of hanging).</summary>
        public int SendTimeoutMs { set { _socket.SendTimeout = value; } }

        /// <summary>Bytes already waiting in the kernel buffer.</summary>
        public int Available { get { return _disposed ? 0 : _socket.Available; } }

        /// <summary>Reads one complete message (list of frames). Commands that arrive in between
        /// are handled (PING answered with PONG, ERROR throws) and skipped. Blocks up to the
        /// socket's receive timeout per read.</summary>
        public List<byte[]> Receive()
        {
            var parts = new List<byte[]>(3);
            while (true)
            {
                bool more, command;
                byte[] body = ReadFrame(out more, out command);
                if (command)
                {
                    HandleCommand(body);
                    continue;
                }
                parts.Add(body);
                if (!more) return parts;
            }
        }

        void HandleCommand(byte[] cmd)
        {
            string name = CommandName(cmd);
            if (name == "PING")
            {
                // PING: name, 2-byte TTL, context (up to 16 bytes). PONG echoes the context.
                int ctxStart = 1 + cmd[0] + 2;
                int ctxLen = Math.Max(0, cmd.Length - ctxStart);
                var pong = new byte[5 + ctxLen];
                pong[0] = 4;
                pong[1] = (byte)'P'; pong[2] = (byte)'O'; pong[3] = (byte)'N'; pong[4] = (byte)'G';
                if (ctxLen > 0) Buffer.BlockCopy(cmd, ctxStart, pong, 5, ctxLen);
                SendFrame(pong, false, true);
            }
            else if (name == "ERROR")
            {
                throw new ZmtpException("peer sent ERROR: " + ErrorReason(cmd));
            }
            // PONG, SUBSCRIBE, CANCEL and unknown commands: ignore.
        }

        public void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            try { _socket.Shutdown(SocketShutdown.Both); } catch (Exception) { }
            try { _stream.Dispose(); } catch (Exception) { }
            try { _socket.Close(0); } catch (Exception) { }
        }
    }
}
