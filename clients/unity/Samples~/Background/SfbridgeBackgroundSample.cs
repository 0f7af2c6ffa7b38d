// sfbridge sample: live generated video as the scene background, plus a prompt box.
//
// Setup (any render pipeline): create an empty GameObject, add SfbridgeStream (set "Set Skybox"
// for a 360 background, or drag a Quad's Renderer / a UI RawImage into its targets), add this
// script next to it, press Play with `sfbridge serve` running. Type a prompt in the box at the
// top-left and press Enter (or "Send"). Keys (legacy Input Manager only): P pause/resume, R new scene, S new random seed.

using System.Collections.Generic;
using Sfbridge;
using Sfbridge.Unity;
using UnityEngine;

[RequireComponent(typeof(SfbridgeStream))]
public class SfbridgeBackgroundSample : MonoBehaviour
{
    public string prompt = "a neon city at night, rain, cinematic";
    [Tooltip("Blend into new prompts over this many blocks (0 = cut).")]
    public int blendBlocks = 4;

    SfbridgeStream _stream;
    string _status = "connecting...";
    string _lastEvent = "";
    bool _paused;

    void Awake()
    {
        _stream = GetComponent<SfbridgeStream>();
    }

    void OnEnable()
    {
        _stream.ConnectionStateChanged += OnState;
        _stream.EventReceived += OnEvent;
        _stream.FrameReceived += OnFrame;
    }

    void OnDisable()
    {
        _stream.ConnectionStateChanged -= OnState;
        _stream.EventReceived -= OnEvent;
        _stream.FrameReceived -= OnFrame;
    }

    void OnState(SfbridgeConnectionState s) { _status = s.ToString(); }

    void OnEvent(Dictionary<string, object> ev)
    {
        string type = MsgPackMap.GetString(ev, "type", "?");
        if (type != "stats") _lastEvent = type + " " + MsgPackMap.ToDebugString(ev);
    }

    void OnFrame(Texture2D tex, SfbridgeFrame f)
    {
        _status = string.Format("{0}x{1} seq {2} state {3} latency {4:0.0} ms",
            f.Width, f.Height, f.Seq, f.State, (SfbridgeTime.Now() - f.TPub) * 1000.0);
    }

    void SendPrompt()
    {
        string transition = blendBlocks > 0 ? "blend" : "cut";
        _stream.SetPrompt(prompt, transition, blendBlocks > 0 ? blendBlocks : 4, (reply, error) =>
        {
            if (error != null) _lastEvent = "prompt failed: " + error.Message;
            else _lastEvent = "prompt accepted: state " + reply.StateId + " at block " + reply.AppliesAtBlock;
        });
    }

    void Update()
    {
#if ENABLE_LEGACY_INPUT_MANAGER
        if (Input.GetKeyDown(KeyCode.P))
        {
            if (_paused) _stream.Resume(); else _stream.Pause();
            _paused = !_paused;
        }
        if (Input.GetKeyDown(KeyCode.R)) _stream.ResetScene(prompt);
        if (Input.GetKeyDown(KeyCode.S)) _stream.SetSeed(Random.Range(0, int.MaxValue));
#endif
    }

    void OnGUI()
    {
        GUILayout.BeginArea(new Rect(10, 10, 640, 120));
        GUILayout.BeginHorizontal();
        GUI.SetNextControlName("sfbridge-prompt");
        prompt = GUILayout.TextField(prompt, GUILayout.Width(520));
        if (GUILayout.Button("Send") ||
            (Event.current.type == EventType.KeyDown && Event.current.keyCode == KeyCode.Return &&
             GUI.GetNameOfFocusedControl() == "sfbridge-prompt"))
            SendPrompt();
        GUILayout.EndHorizontal();
        GUILayout.Label(_status);
        GUILayout.Label(_lastEvent);
        GUILayout.EndArea();
    }
}
