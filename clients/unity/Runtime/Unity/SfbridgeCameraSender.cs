// sfbridge Unity client - MonoBehaviour that sends a Camera's render to the daemon's input socket for
// video-to-video (docs/PROTOCOL.md, input socket): the background follows the game's own picture.
//
// Nothing here stalls the main thread: the camera renders into a RenderTexture at the model size,
// AsyncGPUReadback.Request fetches it a few frames later (no ReadPixels, no GPU sync), the callback
// only copies the bytes and hands them to SfbridgeInputSender, whose background thread converts
// RGBA -> RGB, flips the rows and sends at most maxFps frames per second (newest wins; reconnects).
//
// Orientation: the readback gives rows bottom first (Unity's texture layout); flipRows (on by
// default) turns them into the protocol's top-first rows. If the daemon's picture is upside down
// on a platform, untick it.

using System;
using System.Threading.Tasks;
using UnityEngine;
using UnityEngine.Rendering;

namespace Sfbridge.Unity
{
    [DisallowMultipleComponent]
    [AddComponentMenu("sfbridge/Sfbridge Camera Sender")]
    public class SfbridgeCameraSender : MonoBehaviour
    {
        [Header("Daemon")]
        [Tooltip("Input endpoint of `sfbridge serve` (its bound SUB socket).")]
        public string inputEndpoint = "tcp://127.0.0.1:5557";
        [Tooltip("Control endpoint, used to switch video-to-video on and off.")]
        public string controlEndpoint = "tcp://127.0.0.1:5555";
        [Tooltip("Names this sender in frame headers (`input.client`) and error events; empty: unity-PID-RANDOM.")]
        public string clientId = "";

        [Header("Capture")]
        [Tooltip("The camera whose picture is sent; empty: this GameObject's Camera.")]
        public Camera sourceCamera;
        [Tooltip("Capture size; the model's size (832x480 for self-forcing) avoids a resize in the daemon, which otherwise scales and centre-crops.")]
        public int width = 832;
        public int height = 480;
        [Tooltip("Frames sent per second at most (the model runs at 16).")]
        [Range(1, 16)] public float maxFps = 16;
        [Tooltip("On: the component renders the camera into its RenderTexture with Camera.Render() (built-in pipeline). Off: the camera already renders into CaptureTexture (set it as the camera's target; URP/HDRP) and is only read back.")]
        public bool renderManually = true;
        [Tooltip("Flip rows from Unity's bottom-first layout to the protocol's top-first rows.")]
        public bool flipRows = true;

        [Header("Video-to-video")]
        [Tooltip("Send `input v2v` when enabled and `input off` when disabled.")]
        public bool switchModeOnEnable = true;
        [Tooltip("0..1: 1 ignores the input (text-to-video), lower follows it more closely.")]
        [Range(0, 1)] public float strength = 0.7f;
        [Tooltip("Lower the strength while the picture moves a lot.")]
        public bool motionAdaptive = false;
        public bool logToConsole = true;

        /// <summary>The RenderTexture the camera is captured into (created in OnEnable).</summary>
        public RenderTexture CaptureTexture { get { return _rt; } }
        /// <summary>The background sender (counters: FramesSent, FramesDropped, Connects).</summary>
        public SfbridgeInputSender Sender { get { return _sender; } }
        public long FramesCaptured { get { return _captured; } }
        public long ReadbackErrors { get { return _readbackErrors; } }

        RenderTexture _rt;
        SfbridgeInputSender _sender;
        float _nextCapture;
        int _inFlight;
        long _captured, _readbackErrors;
        bool _warnedUnsupported;

        void OnEnable()
        {
            if (sourceCamera == null) sourceCamera = GetComponent<Camera>();
            _rt = new RenderTexture(Mathf.Clamp(width, 1, SfbridgeInputSender.MaxSide), Mathf.Clamp(height, 1, SfbridgeInputSender.MaxSide), 24, RenderTextureFormat.ARGB32);
            _rt.name = "sfbridge capture";
            _rt.Create();
            try
            {
                _sender = new SfbridgeInputSender(inputEndpoint, string.IsNullOrEmpty(clientId) ? null : clientId);
            }
            catch (Exception e)
            {
                Debug.LogError("sfbridge: bad input endpoint '" + inputEndpoint + "': " + e.Message);
                enabled = false;
                return;
            }
            _sender.MaxFps = maxFps;
            if (logToConsole) _sender.Log += msg => Debug.Log("sfbridge input: " + msg);
            _sender.Start();
            if (switchModeOnEnable) SwitchMode("v2v");
        }

        void OnDisable()
        {
            if (switchModeOnEnable && _sender != null) SwitchMode("off");
            if (_sender != null) _sender.Dispose();
            _sender = null; // readbacks still in flight see this and drop their data
            if (_rt != null)
            {
                _rt.Release();
                Destroy(_rt);
                _rt = null;
            }
        }

        /// <summary>Sends `input MODE` from a worker thread (a request may wait seconds for a dead daemon).</summary>
        public void SwitchMode(string mode)
        {
            string endpoint = controlEndpoint;
            double s = strength;
            bool motion = motionAdaptive;
            bool log = logToConsole;
            Task.Run(() =>
            {
                try
                {
                    using (var control = new SfbridgeControl(endpoint))
                    {
                        SfbridgeReply r = control.Input(mode, s, motion);
                        if (log) Debug.Log("sfbridge: input " + mode + " lands at block " + r.AppliesAtBlock);
                    }
                }
                catch (Exception e)
                {
                    if (log) Debug.LogWarning("sfbridge: input " + mode + " failed: " + e.Message);
                }
            });
        }

        void LateUpdate()
        {
            if (_sender == null || sourceCamera == null || _rt == null) return;
            if (!SystemInfo.supportsAsyncGPUReadback)
            {
                if (!_warnedUnsupported) Debug.LogError("sfbridge: this graphics API has no AsyncGPUReadback; the camera is not sent");
                _warnedUnsupported = true;
                return;
            }
            if (_inFlight >= 2 || Time.unscaledTime < _nextCapture) return;
            _nextCapture = Time.unscaledTime + 1f / Mathf.Clamp(maxFps, 1f, 16f);
            if (renderManually)
            {
                RenderTexture previous = sourceCamera.targetTexture;
                sourceCamera.targetTexture = _rt;
                sourceCamera.Render();
                sourceCamera.targetTexture = previous;
            }
            double tCap = SfbridgeTime.Now();
            SfbridgeInputSender sender = _sender;
            bool flip = flipRows;
            _inFlight++;
            AsyncGPUReadback.Request(_rt, 0, TextureFormat.RGBA32, req => OnReadback(req, sender, tCap, flip));
        }

        // Main thread, a few frames after the request: copy out (the NativeArray lives one frame) and hand over.
        void OnReadback(AsyncGPUReadbackRequest req, SfbridgeInputSender sender, double tCap, bool flip)
        {
            _inFlight = Math.Max(0, _inFlight - 1);
            if (req.hasError)
            {
                _readbackErrors++;
                return;
            }
            if (sender == null || sender != _sender) return;
            var data = req.GetData<byte>();
            var pixels = new byte[data.Length];
            data.CopyTo(pixels);
            _captured++;
            sender.Submit(new SfbridgeInputFrame
            {
                Format = "rgb24", Width = req.width, Height = req.height, Pixels = pixels, PixelStride = 4,
                FlipRows = flip, TCap = tCap,
            });
        }
    }
}
