// sfbridge Unity client - steering options (docs/PROTOCOL.md 2.2): weighted prompt lists, blend
// transitions with an interpolation path, how a list mixes, KV re-cache, and scheduling a change at
// a block or scene time. Builds the request maps and checks arguments before anything is sent
// (ArgumentException naming the argument), with the same rules as the daemon and the Python client.
// No UnityEngine references: SfbridgeWeightedPrompt is [Serializable] so the component can show a
// list of them in the inspector.

using System;
using System.Collections.Generic;

namespace Sfbridge
{
    /// <summary>One entry of a weighted prompt list. Weights are >= 0, not all 0; the daemon normalises them.</summary>
    [Serializable]
    public class SfbridgeWeightedPrompt
    {
        public string text = "";
        public double weight = 1.0;

        public SfbridgeWeightedPrompt() { }

        public SfbridgeWeightedPrompt(string text, double weight)
        {
            this.text = text;
            this.weight = weight;
        }
    }

    public enum SfbridgeTransition { Cut, Blend }
    public enum SfbridgeInterp { Linear, Slerp }
    public enum SfbridgeMix { Linear, Slerp }

    /// <summary>When a change lands: the next block (default), a block index of the current scene, or
    /// the first block whose first frame is at scene time >= Pts seconds. A block that has already
    /// begun means the next one; the reply's applies_at_block says which.</summary>
    public struct SfbridgeSchedule
    {
        readonly long _blockPlusOne; // 0: no block (so default(SfbridgeSchedule) is Next)
        readonly bool _hasPts;
        readonly double _pts;

        SfbridgeSchedule(long blockPlusOne, bool hasPts, double pts)
        {
            _blockPlusOne = blockPlusOne;
            _hasPts = hasPts;
            _pts = pts;
        }

        public static readonly SfbridgeSchedule Next = default(SfbridgeSchedule);

        public static SfbridgeSchedule AtBlock(long block)
        {
            if (block < 0 || block > int.MaxValue)
                throw new ArgumentOutOfRangeException("block", "at_block must be in 0..2^31-1, got " + block);
            return new SfbridgeSchedule(block + 1, false, 0);
        }

        public static SfbridgeSchedule AtPts(double seconds)
        {
            if (double.IsNaN(seconds) || double.IsInfinity(seconds) || seconds < 0 || seconds > 1e8)
                throw new ArgumentOutOfRangeException("seconds", "at_pts must be a number of seconds in 0..1e8, got " + seconds);
            return new SfbridgeSchedule(0, true, seconds);
        }

        public bool IsNext { get { return _blockPlusOne == 0 && !_hasPts; } }
        /// <summary>The block, or -1.</summary>
        public long Block { get { return _blockPlusOne - 1; } }
        /// <summary>The scene time, or -1.</summary>
        public double Pts { get { return _hasPts ? _pts : -1; } }

        /// <summary>Adds at_block / at_pts to a request map (nothing for Next).</summary>
        public void AddTo(Dictionary<string, object> request)
        {
            if (_blockPlusOne > 0) request["at_block"] = _blockPlusOne - 1;
            else if (_hasPts) request["at_pts"] = _pts;
        }
    }

    /// <summary>Options of a prompt change. Strings are the wire values; null Interp/Mix = the daemon's
    /// default (linear). BlendBlocks is sent only with Transition "blend".</summary>
    public sealed class SfbridgePromptOptions
    {
        /// <summary>"cut" or "blend".</summary>
        public string Transition = "cut";
        /// <summary>1..64, with "blend".</summary>
        public int BlendBlocks = 4;
        /// <summary>Blend path from what is on screen to the new prompt: "linear" or "slerp".</summary>
        public string Interp;
        /// <summary>How a weighted list combines: "linear" or "slerp" (exactly 2 entries).</summary>
        public string Mix;
        /// <summary>Rebuild the attention cache of the window under the new prompt where it lands.</summary>
        public bool Recache;
        /// <summary>When it lands (default: the next block).</summary>
        public SfbridgeSchedule At;
    }

    /// <summary>Request maps of the steering ops, checked like the daemon checks them.</summary>
    public static class SfbridgeSteering
    {
        public const int MaxWeightedPrompts = 8;
        public const int MaxBlendBlocks = 64;
        public const int MaxPromptChars = 4000;

        public static string Wire(SfbridgeTransition t) { return t == SfbridgeTransition.Blend ? "blend" : "cut"; }
        public static string Wire(SfbridgeInterp i) { return i == SfbridgeInterp.Slerp ? "slerp" : "linear"; }
        public static string Wire(SfbridgeMix m) { return m == SfbridgeMix.Slerp ? "slerp" : "linear"; }

        static Dictionary<string, object> Op(string op)
        {
            var d = new Dictionary<string, object>();
            d["op"] = op;
            return d;
        }

        static string CheckText(string text, string name)
        {
            if (text == null) throw new ArgumentNullException(name);
            string t = text.Trim();
            if (t.Length == 0) throw new ArgumentException(name + " must not be empty", name);
            if (t.Length > MaxPromptChars)
                throw new ArgumentException(name + " has " + t.Length + " characters, max " + MaxPromptChars, name);
            return text;
        }

        static void CheckChoice(string value, string name)
        {
            if (value != "linear" && value != "slerp")
                throw new ArgumentException(name + " must be linear or slerp, got '" + value + "'", name);
        }

        static void AddOptions(Dictionary<string, object> d, SfbridgePromptOptions o, int entries)
        {
            string transition = o.Transition ?? "cut";
            if (transition != "cut" && transition != "blend")
                throw new ArgumentException("Transition must be cut or blend, got '" + transition + "'", "options");
            d["transition"] = transition;
            if (transition == "blend")
            {
                if (o.BlendBlocks < 1 || o.BlendBlocks > MaxBlendBlocks)
                    throw new ArgumentException("BlendBlocks must be in 1.." + MaxBlendBlocks + ", got " + o.BlendBlocks, "options");
                d["blend_blocks"] = o.BlendBlocks;
            }
            if (o.Interp != null)
            {
                CheckChoice(o.Interp, "Interp");
                d["interp"] = o.Interp;
            }
            if (o.Mix != null)
            {
                if (entries == 0) throw new ArgumentException("Mix combines a weighted list: use WeightedPrompt", "options");
                CheckChoice(o.Mix, "Mix");
                if (o.Mix == "slerp" && entries != 2)
                    throw new ArgumentException("Mix slerp takes exactly 2 prompts, got " + entries, "options");
                d["mix"] = o.Mix;
            }
            if (o.Recache) d["recache"] = true;
            o.At.AddTo(d);
        }

        /// <summary>A single-prompt change.</summary>
        public static Dictionary<string, object> PromptRequest(string text, SfbridgePromptOptions options)
        {
            var d = Op("prompt");
            d["text"] = CheckText(text, "text");
            AddOptions(d, options ?? new SfbridgePromptOptions(), 0);
            return d;
        }

        /// <summary>A weighted list (1..8 entries, weights finite >= 0, not all 0).</summary>
        public static Dictionary<string, object> WeightedPromptRequest(IList<SfbridgeWeightedPrompt> prompts,
                                                                       SfbridgePromptOptions options)
        {
            if (prompts == null) throw new ArgumentNullException("prompts");
            if (prompts.Count < 1 || prompts.Count > MaxWeightedPrompts)
                throw new ArgumentException("prompts must hold 1 to " + MaxWeightedPrompts + " entries, got " + prompts.Count, "prompts");
            var list = new List<object>();
            bool positive = false;
            for (int i = 0; i < prompts.Count; i++)
            {
                SfbridgeWeightedPrompt p = prompts[i];
                if (p == null) throw new ArgumentNullException("prompts[" + i + "]");
                double w = p.weight;
                if (double.IsNaN(w) || double.IsInfinity(w) || w < 0)
                    throw new ArgumentException("prompts[" + i + "] weight must be a finite number >= 0, got " + w, "prompts");
                positive |= w > 0;
                var e = new Dictionary<string, object>();
                e["text"] = CheckText(p.text, "prompts[" + i + "] text");
                e["weight"] = w;
                list.Add(e);
            }
            if (!positive) throw new ArgumentException("prompts weights must not all be 0", "prompts");
            var d = Op("prompt");
            d["prompts"] = list;
            AddOptions(d, options ?? new SfbridgePromptOptions(), list.Count);
            return d;
        }

        public static Dictionary<string, object> SeedRequest(long seed, SfbridgeSchedule at)
        {
            if (seed < 0) throw new ArgumentOutOfRangeException("seed", "seed must be in 0..2^63-1, got " + seed);
            var d = Op("seed");
            d["seed"] = seed;
            at.AddTo(d);
            return d;
        }

        public static Dictionary<string, object> StepsRequest(int[] steps, SfbridgeSchedule at)
        {
            if (steps == null) throw new ArgumentNullException("steps");
            var d = Op("steps");
            var l = new List<object>();
            foreach (int s in steps) l.Add(s);
            d["steps"] = l;
            at.AddTo(d);
            return d;
        }

        /// <summary>Video-to-video from input frames: mode "v2v" or "off"; strength 0..1 (1 = text-to-video,
        /// lower follows the input more); motionAdaptive lowers it while the input moves a lot.</summary>
        public static Dictionary<string, object> InputRequest(string mode, double strength, bool motionAdaptive, SfbridgeSchedule at)
        {
            if (mode != "v2v" && mode != "off") throw new ArgumentException("mode must be v2v or off, got '" + mode + "'", "mode");
            if (double.IsNaN(strength) || strength < 0 || strength > 1)
                throw new ArgumentOutOfRangeException("strength", "strength must be in 0..1, got " + strength);
            var d = Op("input");
            d["mode"] = mode;
            d["strength"] = strength;
            d["motion_adaptive"] = motionAdaptive;
            at.AddTo(d);
            return d;
        }

        /// <summary>Drops a scheduled change; the daemon answers not_found when it is unknown or has landed.</summary>
        public static Dictionary<string, object> CancelRequest(long stateId)
        {
            if (stateId < 0) throw new ArgumentOutOfRangeException("stateId", "state_id must be >= 0, got " + stateId);
            var d = Op("cancel");
            d["state_id"] = stateId;
            return d;
        }
    }
}
