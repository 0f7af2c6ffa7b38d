// sfbridge Unity client - dependency-free MessagePack subset (no UnityEngine references).
//
// Covers what the sfbridge protocol uses: nil, bool, every int width, float32/float64, str,
// bin, array, map (ext is read and returned as MsgPackExt). Decoded values are plain .NET
// objects:
//   nil -> null, bool -> bool, ints -> long (ulong only above long.MaxValue),
//   float32 -> float, float64 -> double, str -> string, bin -> byte[],
//   array -> List<object>, map -> Dictionary<string, object> (non-string keys are turned into
//   their invariant string form; the protocol only uses string keys).
// C# 7.3 syntax, .NET Standard 2.1 API only, so mcs (Mono 6.8) and Unity both compile it.

using System;
using System.Collections;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Text;

namespace Sfbridge
{
    /// <summary>Thrown when a byte buffer is not valid MessagePack (or uses an unsupported form).</summary>
    public class MsgPackException : Exception
    {
        public MsgPackException(string message) : base(message) { }
    }

    /// <summary>A msgpack extension value (type code and raw data), returned as-is.</summary>
    public sealed class MsgPackExt
    {
        public readonly sbyte Type;
        public readonly byte[] Data;
        public MsgPackExt(sbyte type, byte[] data) { Type = type; Data = data; }
    }

    /// <summary>Encodes .NET values into MessagePack.</summary>
    public sealed class MsgPackWriter
    {
        readonly MemoryStream _buf;

        public MsgPackWriter() { _buf = new MemoryStream(256); }

        public byte[] ToArray() { return _buf.ToArray(); }

        /// <summary>Encodes one value to a new byte array.</summary>
        public static byte[] Pack(object value)
        {
            var w = new MsgPackWriter();
            w.Write(value);
            return w.ToArray();
        }

        void B(int b) { _buf.WriteByte((byte)b); }

        void BE(ulong v, int bytes)
        {
            for (int i = bytes - 1; i >= 0; i--) _buf.WriteByte((byte)(v >> (8 * i)));
        }

        public void WriteNil() { B(0xc0); }

        public void WriteBool(bool v) { B(v ? 0xc3 : 0xc2); }

        /// <summary>Writes a signed integer in the smallest msgpack form.</summary>
        public void WriteInt(long v)
        {
            if (v >= 0) { WriteUInt((ulong)v); return; }
            if (v >= -32) B((int)(0xe0 | (v & 0x1f)));
            else if (v >= sbyte.MinValue) { B(0xd0); BE((ulong)v, 1); }
            else if (v >= short.MinValue) { B(0xd1); BE((ulong)v, 2); }
            else if (v >= int.MinValue) { B(0xd2); BE((ulong)v, 4); }
            else { B(0xd3); BE((ulong)v, 8); }
        }

        /// <summary>Writes an unsigned integer in the smallest msgpack form.</summary>
        public void WriteUInt(ulong v)
        {
            if (v <= 0x7f) B((int)v);
            else if (v <= 0xff) { B(0xcc); BE(v, 1); }
            else if (v <= 0xffff) { B(0xcd); BE(v, 2); }
            else if (v <= 0xffffffff) { B(0xce); BE(v, 4); }
            else { B(0xcf); BE(v, 8); }
        }

        public void WriteFloat(float v)
        {
            B(0xca);
            BE((uint)BitConverter.ToInt32(BitConverter.GetBytes(v), 0), 4);
        }

        public void WriteDouble(double v)
        {
            B(0xcb);
            BE((ulong)BitConverter.DoubleToInt64Bits(v), 8);
        }

        public void WriteString(string s)
        {
            byte[] b = Encoding.UTF8.GetBytes(s);
            int n = b.Length;
            if (n <= 31) B(0xa0 | n);
            else if (n <= 0xff) { B(0xd9); BE((ulong)n, 1); }
            else if (n <= 0xffff) { B(0xda); BE((ulong)n, 2); }
            else { B(0xdb); BE((ulong)n, 4); }
            _buf.Write(b, 0, n);
        }

        public void WriteBin(byte[] b)
        {
            int n = b.Length;
            if (n <= 0xff) { B(0xc4); BE((ulong)n, 1); }
            else if (n <= 0xffff) { B(0xc5); BE((ulong)n, 2); }
            else { B(0xc6); BE((ulong)n, 4); }
            _buf.Write(b, 0, n);
        }

        public void WriteArrayHeader(int n)
        {
            if (n <= 15) B(0x90 | n);
            else if (n <= 0xffff) { B(0xdc); BE((ulong)n, 2); }
            else { B(0xdd); BE((ulong)n, 4); }
        }

        public void WriteMapHeader(int n)
        {
            if (n <= 15) B(0x80 | n);
            else if (n <= 0xffff) { B(0xde); BE((ulong)n, 2); }
            else { B(0xdf); BE((ulong)n, 4); }
        }

        /// <summary>Writes any supported value: null, bool, integer types, float, double, string,
        /// byte[], IDictionary (keys written as given), IList / IEnumerable.</summary>
        public void Write(object v)
        {
            if (v == null) { WriteNil(); return; }
            if (v is bool) { WriteBool((bool)v); return; }
            if (v is string) { WriteString((string)v); return; }
            if (v is byte[]) { WriteBin((byte[])v); return; }
            if (v is int) { WriteInt((int)v); return; }
            if (v is long) { WriteInt((long)v); return; }
            if (v is short) { WriteInt((short)v); return; }
            if (v is sbyte) { WriteInt((sbyte)v); return; }
            if (v is byte) { WriteUInt((byte)v); return; }
            if (v is ushort) { WriteUInt((ushort)v); return; }
            if (v is uint) { WriteUInt((uint)v); return; }
            if (v is ulong) { WriteUInt((ulong)v); return; }
            if (v is float) { WriteFloat((float)v); return; }
            if (v is double) { WriteDouble((double)v); return; }
            if (v is MsgPackExt)
            {
                var e = (MsgPackExt)v;
                B(0xc7); BE((ulong)e.Data.Length, 1); B((byte)e.Type);
                _buf.Write(e.Data, 0, e.Data.Length);
                return;
            }
            var dict = v as IDictionary;
            if (dict != null)
            {
                WriteMapHeader(dict.Count);
                foreach (DictionaryEntry kv in dict) { Write(kv.Key); Write(kv.Value); }
                return;
            }
            var list = v as ICollection;
            if (list != null)
            {
                WriteArrayHeader(list.Count);
                foreach (object o in list) Write(o);
                return;
            }
            var en = v as IEnumerable;
            if (en != null)
            {
                var tmp = new List<object>();
                foreach (object o in en) tmp.Add(o);
                WriteArrayHeader(tmp.Count);
                foreach (object o in tmp) Write(o);
                return;
            }
            throw new MsgPackException("cannot encode values of type " + v.GetType().FullName);
        }
    }

    /// <summary>Decodes MessagePack into plain .NET objects (see the file header).</summary>
    public sealed class MsgPackReader
    {
        readonly byte[] _b;
        int _pos;
        readonly int _end;
        int _depth;
        const int MaxDepth = 64;

        public MsgPackReader(byte[] buffer) : this(buffer, 0, buffer.Length) { }

        public MsgPackReader(byte[] buffer, int offset, int count)
        {
            if (buffer == null) throw new ArgumentNullException("buffer");
            _b = buffer; _pos = offset; _end = offset + count;
        }

        public int Position { get { return _pos; } }
        public bool AtEnd { get { return _pos >= _end; } }

        /// <summary>Decodes exactly one value that must fill the whole buffer.</summary>
        public static object Unpack(byte[] buffer)
        {
            var r = new MsgPackReader(buffer);
            object v = r.Read();
            if (!r.AtEnd) throw new MsgPackException("trailing bytes after msgpack value");
            return v;
        }

        /// <summary>Decodes a buffer that must hold a map (e.g. a frame header or a reply).</summary>
        public static Dictionary<string, object> UnpackMap(byte[] buffer)
        {
            var m = Unpack(buffer) as Dictionary<string, object>;
            if (m == null) throw new MsgPackException("msgpack value is not a map");
            return m;
        }

        void Need(int n)
        {
            if (n < 0 || _end - _pos < n) throw new MsgPackException("truncated msgpack data");
        }

        ulong BE(int n)
        {
            Need(n);
            ulong v = 0;
            for (int i = 0; i < n; i++) v = (v << 8) | _b[_pos + i];
            _pos += n;
            return v;
        }

        int Len(int n)
        {
            ulong v = BE(n);
            if (v > int.MaxValue) throw new MsgPackException("msgpack length too large");
            return (int)v;
        }

        byte[] Bytes(int n)
        {
            Need(n);
            var r = new byte[n];
            Buffer.BlockCopy(_b, _pos, r, 0, n);
            _pos += n;
            return r;
        }

        string Str(int n)
        {
            Need(n);
            string s = Encoding.UTF8.GetString(_b, _pos, n);
            _pos += n;
            return s;
        }

        static object UInt(ulong v)
        {
            if (v <= long.MaxValue) return (long)v;
            return v;
        }

        public object Read()
        {
            Need(1);
            int t = _b[_pos++];
            if (t <= 0x7f) return (long)t;
            if (t >= 0xe0) return (long)(sbyte)t;
            if ((t & 0xf0) == 0x80) return Map(t & 0x0f);
            if ((t & 0xf0) == 0x90) return Array(t & 0x0f);
            if ((t & 0xe0) == 0xa0) return Str(t & 0x1f);
            switch (t)
            {
                case 0xc0: return null;
                case 0xc2: return false;
                case 0xc3: return true;
                case 0xc4: return Bytes(Len(1));
                case 0xc5: return Bytes(Len(2));
                case 0xc6: return Bytes(Len(4));
                case 0xc7: { int n = Len(1); return Ext(n); }
                case 0xc8: { int n = Len(2); return Ext(n); }
                case 0xc9: { int n = Len(4); return Ext(n); }
                case 0xca:
                    {
                        uint u = (uint)BE(4);
                        return BitConverter.ToSingle(BitConverter.GetBytes((int)u), 0);
                    }
                case 0xcb: return BitConverter.Int64BitsToDouble((long)BE(8));
                case 0xcc: return (long)BE(1);
                case 0xcd: return (long)BE(2);
                case 0xce: return (long)BE(4);
                case 0xcf: return UInt(BE(8));
                case 0xd0: return (long)(sbyte)BE(1);
                case 0xd1: return (long)(short)BE(2);
                case 0xd2: return (long)(int)BE(4);
                case 0xd3: return (long)BE(8);
                case 0xd4: return Ext(1);
                case 0xd5: return Ext(2);
                case 0xd6: return Ext(4);
                case 0xd7: return Ext(8);
                case 0xd8: return Ext(16);
                case 0xd9: return Str(Len(1));
                case 0xda: return Str(Len(2));
                case 0xdb: return Str(Len(4));
                case 0xdc: return Array(Len(2));
                case 0xdd: return Array(Len(4));
                case 0xde: return Map(Len(2));
                case 0xdf: return Map(Len(4));
            }
            throw new MsgPackException("invalid msgpack type byte 0x" + t.ToString("x2"));
        }

        MsgPackExt Ext(int n)
        {
            Need(1);
            sbyte type = (sbyte)_b[_pos++];
            return new MsgPackExt(type, Bytes(n));
        }

        List<object> Array(int n)
        {
            if (++_depth > MaxDepth) throw new MsgPackException("msgpack nesting too deep");
            // Each element needs at least one byte: refuse absurd counts before allocating.
            Need(n);
            var list = new List<object>(n);
            for (int i = 0; i < n; i++) list.Add(Read());
            _depth--;
            return list;
        }

        Dictionary<string, object> Map(int n)
        {
            if (++_depth > MaxDepth) throw new MsgPackException("msgpack nesting too deep");
            Need(n);
            var map = new Dictionary<string, object>(n);
            for (int i = 0; i < n; i++)
            {
                object k = Read();
                string key = k as string;
                if (key == null) key = k == null ? "" : Convert.ToString(k, CultureInfo.InvariantCulture);
                map[key] = Read();
            }
            _depth--;
            return map;
        }
    }

    /// <summary>Typed access to decoded msgpack maps, tolerant of int width and float32/float64.</summary>
    public static class MsgPackMap
    {
        public static bool Has(IDictionary<string, object> m, string key)
        {
            return m != null && m.ContainsKey(key);
        }

        public static long GetLong(IDictionary<string, object> m, string key, long dflt = 0)
        {
            object v;
            if (m == null || !m.TryGetValue(key, out v) || v == null) return dflt;
            if (v is long) return (long)v;
            if (v is ulong) return unchecked((long)(ulong)v);
            if (v is double) return (long)(double)v;
            if (v is float) return (long)(float)v;
            if (v is bool) return (bool)v ? 1 : 0;
            return dflt;
        }

        public static double GetDouble(IDictionary<string, object> m, string key, double dflt = 0)
        {
            object v;
            if (m == null || !m.TryGetValue(key, out v) || v == null) return dflt;
            if (v is double) return (double)v;
            if (v is float) return (float)v;
            if (v is long) return (long)v;
            if (v is ulong) return (ulong)v;
            return dflt;
        }

        public static string GetString(IDictionary<string, object> m, string key, string dflt = null)
        {
            object v;
            if (m == null || !m.TryGetValue(key, out v) || v == null) return dflt;
            var s = v as string;
            if (s != null) return s;
            var b = v as byte[];
            if (b != null) return Encoding.UTF8.GetString(b);
            return Convert.ToString(v, CultureInfo.InvariantCulture);
        }

        public static bool GetBool(IDictionary<string, object> m, string key, bool dflt = false)
        {
            object v;
            if (m == null || !m.TryGetValue(key, out v) || v == null) return dflt;
            if (v is bool) return (bool)v;
            if (v is long) return (long)v != 0;
            return dflt;
        }

        public static Dictionary<string, object> GetMap(IDictionary<string, object> m, string key)
        {
            object v;
            if (m == null || !m.TryGetValue(key, out v)) return null;
            return v as Dictionary<string, object>;
        }

        public static List<object> GetList(IDictionary<string, object> m, string key)
        {
            object v;
            if (m == null || !m.TryGetValue(key, out v)) return null;
            return v as List<object>;
        }

        /// <summary>A short JSON-like rendering for logs.</summary>
        public static string ToDebugString(object v)
        {
            var sb = new StringBuilder();
            Dump(sb, v, 0);
            return sb.ToString();
        }

        static void Dump(StringBuilder sb, object v, int depth)
        {
            if (depth > 8) { sb.Append("..."); return; }
            if (v == null) { sb.Append("null"); return; }
            if (v is bool) { sb.Append((bool)v ? "true" : "false"); return; }
            if (v is string) { sb.Append('"').Append((string)v).Append('"'); return; }
            if (v is byte[]) { sb.Append("<bin ").Append(((byte[])v).Length).Append(">"); return; }
            if (v is double) { sb.Append(((double)v).ToString("R", CultureInfo.InvariantCulture)); return; }
            if (v is float) { sb.Append(((float)v).ToString("R", CultureInfo.InvariantCulture)); return; }
            var d = v as IDictionary<string, object>;
            if (d != null)
            {
                sb.Append('{');
                bool first = true;
                foreach (var kv in d)
                {
                    if (!first) sb.Append(", ");
                    first = false;
                    sb.Append(kv.Key).Append(": ");
                    Dump(sb, kv.Value, depth + 1);
                }
                sb.Append('}');
                return;
            }
            var l = v as IList;
            if (l != null)
            {
                sb.Append('[');
                for (int i = 0; i < l.Count; i++)
                {
                    if (i > 0) sb.Append(", ");
                    Dump(sb, l[i], depth + 1);
                }
                sb.Append(']');
                return;
            }
            sb.Append(Convert.ToString(v, CultureInfo.InvariantCulture));
        }
    }
}
