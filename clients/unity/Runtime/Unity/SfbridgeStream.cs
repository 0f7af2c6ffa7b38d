// sfbridge Unity client - MonoBehaviour that shows the daemon's live stream in a Texture2D and
// exposes the steering API to game code. All sockets live on background threads; nothing here
// blocks the main thread. Callbacks and C# events are raised on the main thread (in Update).
//
// Orientation: Unity textures are stored bottom-up. JPEG frames go through
// ImageConversion.LoadImage, which already produces an upright texture. rgb24 frames arrive top
// to bottom (PROTOCOL.md 3), so their rows are flipped before LoadRawTextureData (flipRgbRows,
// on by default); no UV tricks are needed on the material or RawImage.

using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Threading.Tasks;
using UnityEngine;
using UnityEngine.UI;

namespace Sfbridge.Unity
{
    [DisallowMultipleComponent]
    [AddComponentMenu("sfbridge/Sfbridge Stream")]
    public class SfbridgeStream : MonoBehaviour
    {
        [Header("Daemon")]
        [Tooltip("Control endpoint of `sfbridge serve` (ROUTER).")]
        public string controlEndpoint = "tcp://127.0.0.1:5555";
        [Tooltip("Frames endpoint of `sfbridge serve` (XPUB).")]
        public string framesEndpoint = "tcp://127.0.0.1:5556";
        [Tooltip("Jpeg: small, decoded with ImageConversion.LoadImage. Rgb24: raw, no decode cost, ~20x the bandwidth.")]
        public SfbridgeFormat format = SfbridgeFormat.Jpeg;
        [Tooltip("Connect in OnEnable.")]
        public bool connectOnEnable = true;
        [Tooltip("Per-request timeout (ms); requests are retried with a fresh socket (PROTOCOL.md 1.2).")]
        public int requestTimeoutMs = 2000;
        [Tooltip("Attempts per request.")]
        public int requestAttempts = 3;

        [Header("Targets (any combination)")]
        [Tooltip("Renderer whose material gets the texture.")]
        public Renderer targetRenderer;
        [Tooltip("Texture property on the renderer's material: _MainTex (Built-in), _BaseMap (URP Lit), _BaseColorMap (HDRP Lit).")]
        public string textureProperty = "_MainTex";
        [Tooltip("UI RawImage that shows the texture.")]
        public RawImage targetRawImage;
        [Tooltip("Put the stream on the skybox (equirectangular panorama via Skybox/Panoramic).")]
        public bool setSkybox = false;
        [Tooltip("Skybox material to use; when empty a Skybox/Panoramic material is created.")]
        public Material skyboxMaterial;

        [Header("Texture")]
        [Tooltip("rgb24 only: flip rows so the image is upright in Unity's bottom-up texture layout.")]
        public bool flipRgbRows = true;
        public FilterMode filterMode = FilterMode.Bilinear;
        public TextureWrapMode wrapMode = TextureWrapMode.Clamp;

        [Header("Steering (sent by Apply Inspector Steering, or on connect)")]
        [Tooltip("The prompt: one entry = a plain prompt; several = a weighted list blended in embedding space (weights >= 0, not all 0, normalised by the daemon; at most 8).")]
        public SfbridgeWeightedPrompt[] prompts = { new SfbridgeWeightedPrompt("a beautiful landscape", 1.0) };
        [Tooltip("How several prompts combine: Linear (weighted mean, norm kept) or Slerp (exactly 2 prompts).")]
        public SfbridgeMix mix = SfbridgeMix.Linear;
        [Tooltip("Cut: switch at the block where the change lands. Blend: move over Blend Blocks blocks.")]
        public SfbridgeTransition transition = SfbridgeTransition.Cut;
        [Tooltip("Blocks a blend takes (1..64).")]
        public int blendBlocks = 4;
        [Tooltip("Path of a blend from what is on screen to the new prompt.")]
        public SfbridgeInterp interp = SfbridgeInterp.Linear;
        [Tooltip("Rebuild the attention cache of the recent frames under the new prompt where it lands: follows the prompt faster without a hard cut (one extra model pass).")]
        public bool recache = false;
        [Tooltip("Scheduled change: land at this block of the current scene (a block already begun = the next one). -1: the next block.")]
        public long applyAtBlock = -1;
        [Tooltip("Send the steering above once connected.")]
        public bool sendSteeringOnConnect = false;

        [Header("Diagnostics")]
        public bool logToConsole = true;

        /// <summary>New frame shown (main thread): the texture (same object every time unless
        /// recreated) and the frame with its header.</summary>
        public event Action<Texture2D, SfbridgeFrame> FrameReceived;
        /// <summary>Daemon event (main thread): started, applied, paused, resumed, error, stats, stopping.</summary>
        public event Action<Dictionary<string, object>> EventReceived;
        /// <summary>Stream connection state changed (main thread).</summary>
        public event Action<SfbridgeConnectionState> ConnectionStateChanged;

        /// <summary>The texture frames are written into (null before the first frame).</summary>
        public Texture2D Texture { get { return _texture; } }
        /// <summary>The header of the last frame shown.</summary>
        public SfbridgeFrame LastFrame { get { return _lastFrame; } }
        public SfbridgeConnectionState ConnectionState { get { return _state; } }
        /// <summary>Low-level clients, for advanced use (null while disabled).</summary>
        public SfbridgeSubscriber Subscriber { get { return _subscriber; } }
        public SfbridgeControl Control { get { return _control; } }
        public long FramesShown { get { return _framesShown; } }

        SfbridgeSubscriber _subscriber;
        SfbridgeControl _control;
        Texture2D _texture;
        Material _createdSkybox;      // Skybox/Panoramic material this component made (setSkybox, no skyboxMaterial)
        Material _skyboxBefore;       // RenderSettings.skybox before this component replaced it
        Material _skyboxAssigned;     // what this component put on RenderSettings.skybox (null: nothing)
        Material _rendererMaterial;   // instance made by targetRenderer.material (ours to destroy)
        Material _rendererMaterialWas; // that renderer's sharedMaterial before the instance
        Renderer _rendererMaterialOf;  // the renderer _rendererMaterial was made for
        SfbridgeFrame _lastFrame;
        byte[] _flipBuffer;
        long _framesShown;
        bool _targetsPending; // texture (re)created but not yet put on the targets
        SfbridgeConnectionState _state = SfbridgeConnectionState.Disconnected;
        // Work for the main thread, tagged with the connection generation that queued it.
        // Disconnect bumps _generation, so a callback that a worker thread queues after the
        // queue was cleared (a control reply that was already in flight) is dropped in Update
        // instead of running after the next Connect.
        struct MainThreadWork
        {
            public int Generation;
            public Action Run;
        }
        readonly ConcurrentQueue<MainThreadWork> _mainThread = new ConcurrentQueue<MainThreadWork>();
        volatile int _generation;

        void OnEnable()
        {
            if (connectOnEnable) Connect();
        }

        void OnDisable()
        {
            Disconnect();
        }

        void OnApplicationQuit()
        {
            Disconnect();
        }

        void OnDestroy()
        {
            Disconnect();
            // Destroy exactly what this component instantiated, after putting the scene back
            // the way it was (nothing may keep pointing at a destroyed object).
            ReleaseRendererMaterial();
            ReleaseSkybox();
            if (targetRawImage != null && targetRawImage.texture == _texture) targetRawImage.texture = null;
            if (_texture != null) Destroy(_texture);
            _texture = null;
        }

        void Post(int generation, Action run)
        {
            _mainThread.Enqueue(new MainThreadWork { Generation = generation, Run = run });
        }

        /// <summary>Starts the stream and control clients (idempotent).</summary>
        public void Connect()
        {
            if (_subscriber != null) return;
            try
            {
                int gen = _generation;
                _subscriber = new SfbridgeSubscriber(framesEndpoint, format, true);
                _subscriber.StateChanged += s => Post(gen, () => SetState(s));
                if (logToConsole) _subscriber.Log += m => Debug.Log("[sfbridge] " + m);
                _subscriber.Start();
                _control = new SfbridgeControl(controlEndpoint);
                _control.TimeoutMs = requestTimeoutMs;
                _control.Attempts = requestAttempts;
                if (logToConsole) _control.Log += m => Debug.Log("[sfbridge] " + m);
                if (sendSteeringOnConnect) ApplyInspectorSteering();
            }
            catch (Exception e)
            {
                Debug.LogError("[sfbridge] cannot start: " + e.Message);
                Disconnect();
            }
        }

        /// <summary>Stops threads (joined with a timeout) and closes sockets. Safe to call twice;
        /// no static state survives it, so entering Play mode again starts clean.</summary>
        public void Disconnect()
        {
            var s = _subscriber;
            var c = _control;
            _subscriber = null;
            _control = null;
            // Everything queued from now on by this connection's threads is stale (see Post).
            _generation++;
            if (s != null) s.Stop(1000);
            if (c != null) c.Close(1000);
            MainThreadWork dropped;
            while (_mainThread.TryDequeue(out dropped)) { }
            SetState(SfbridgeConnectionState.Disconnected);
        }

        void SetState(SfbridgeConnectionState s)
        {
            if (s == _state) return;
            _state = s;
            var h = ConnectionStateChanged;
            if (h != null) h(s);
        }

        void Update()
        {
            MainThreadWork w;
            int budget = 64;
            while (budget-- > 0 && _mainThread.TryDequeue(out w))
            {
                if (w.Generation != _generation) continue; // queued by an earlier connection
                try { w.Run(); } catch (Exception e) { Debug.LogException(e); }
            }
            var sub = _subscriber;
            if (sub == null) return;

            Dictionary<string, object> ev;
            while (sub.TryDequeueEvent(out ev))
            {
                var h = EventReceived;
                if (h != null)
                {
                    try { h(ev); } catch (Exception e) { Debug.LogException(e); }
                }
            }

            // Only the newest frame is decoded; older ones were dropped on the receive thread.
            SfbridgeFrame f = sub.TryTakeLatest();
            if (f != null) Show(f);
        }

        void Show(SfbridgeFrame f)
        {
            if (_texture == null)
            {
                _texture = new Texture2D(f.Width, f.Height, TextureFormat.RGB24, false);
                _texture.name = "sfbridge stream";
                _texture.filterMode = filterMode;
                _texture.wrapMode = wrapMode;
                // Assigned after the first frame that decodes: if this one is rejected (bad JPEG,
                // wrong rgb24 size) the next good frame must still reach the targets.
                _targetsPending = true;
            }
            if (f.Format == "jpeg")
            {
                // LoadImage resizes the texture when needed and keeps the same Texture2D object.
                if (!ImageConversion.LoadImage(_texture, f.Payload, false))
                {
                    Debug.LogWarning("[sfbridge] could not decode JPEG frame seq " + f.Seq);
                    return;
                }
            }
            else
            {
                int n = f.Width * f.Height * 3;
                if (f.Payload.Length != n) return;
                if (_texture.width != f.Width || _texture.height != f.Height || _texture.format != TextureFormat.RGB24)
                {
                    // Size change only: reallocate; same size reuses the GPU texture.
                    _texture.Reinitialize(f.Width, f.Height, TextureFormat.RGB24, false);
                }
                byte[] data = f.Payload;
                if (flipRgbRows)
                {
                    if (_flipBuffer == null || _flipBuffer.Length != n) _flipBuffer = new byte[n];
                    int row = f.Width * 3;
                    for (int y = 0; y < f.Height; y++)
                        Buffer.BlockCopy(f.Payload, y * row, _flipBuffer, (f.Height - 1 - y) * row, row);
                    data = _flipBuffer;
                }
                _texture.LoadRawTextureData(data);
                _texture.Apply(false, false);
            }
            _lastFrame = f;
            _framesShown++;
            if (_targetsPending)
            {
                _targetsPending = false;
                AssignTargets();
            }
            var h = FrameReceived;
            if (h != null)
            {
                try { h(_texture, f); } catch (Exception e) { Debug.LogException(e); }
            }
        }

        /// <summary>(Re)applies the texture to the configured targets; call after changing them.</summary>
        public void AssignTargets()
        {
            if (_texture == null) return;
            if (targetRenderer != null)
            {
                Material m = RendererMaterial();
                if (m.HasProperty(textureProperty)) m.SetTexture(textureProperty, _texture);
                else m.mainTexture = _texture;
            }
            if (targetRawImage != null) targetRawImage.texture = _texture;
            if (setSkybox)
            {
                Material sky = skyboxMaterial;
                if (sky == null)
                {
                    if (_createdSkybox == null)
                    {
                        Shader sh = Shader.Find("Skybox/Panoramic");
                        if (sh == null)
                        {
                            Debug.LogWarning("[sfbridge] shader Skybox/Panoramic not found (add it to Always Included Shaders)");
                            return;
                        }
                        _createdSkybox = new Material(sh);
                        _createdSkybox.name = "sfbridge panoramic skybox";
                    }
                    sky = _createdSkybox;
                }
                sky.SetTexture("_MainTex", _texture);
                if (_skyboxAssigned == null) _skyboxBefore = RenderSettings.skybox;
                RenderSettings.skybox = sky;
                _skyboxAssigned = sky;
            }
        }

        /// <summary>The material instance of targetRenderer that gets the texture. Made once per
        /// renderer (targetRenderer.material instantiates, so shared assets are untouched); a
        /// previous renderer's instance is released first, so re-assigning does not leak.</summary>
        Material RendererMaterial()
        {
            if (_rendererMaterial != null && _rendererMaterialOf == targetRenderer) return _rendererMaterial;
            ReleaseRendererMaterial();
            _rendererMaterialOf = targetRenderer;
            _rendererMaterialWas = targetRenderer.sharedMaterial;
            _rendererMaterial = targetRenderer.material;
            return _rendererMaterial;
        }

        /// <summary>Destroys the renderer material instance this component made, giving the
        /// renderer back its original (shared) material if it still uses the instance.</summary>
        void ReleaseRendererMaterial()
        {
            if (_rendererMaterial == null) return;
            if (_rendererMaterialOf != null && _rendererMaterialOf.sharedMaterial == _rendererMaterial)
                _rendererMaterialOf.sharedMaterial = _rendererMaterialWas;
            Destroy(_rendererMaterial);
            _rendererMaterial = null;
            _rendererMaterialWas = null;
            _rendererMaterialOf = null;
        }

        /// <summary>Puts back the skybox this component replaced (if it is still ours) and
        /// destroys the Skybox/Panoramic material it created.</summary>
        void ReleaseSkybox()
        {
            if (_skyboxAssigned != null && RenderSettings.skybox == _skyboxAssigned)
                RenderSettings.skybox = _skyboxBefore;
            _skyboxAssigned = null;
            _skyboxBefore = null;
            if (_createdSkybox != null) Destroy(_createdSkybox);
            _createdSkybox = null;
        }

        // ---------------------------------------------------------------- steering API
        // Every call returns at once; the request runs on the control worker thread and the
        // optional callback gets (reply, error) on the main thread. error is an
        // SfbridgeRequestException (daemon said no, see Code) or an SfbridgeTimeoutException (no
        // daemon). The callback of a request still pending at Disconnect (component disabled
        // meanwhile) never runs, not even after a later Connect.

        /// <summary>Sends any request map (op + arguments).</summary>
        public void Request(Dictionary<string, object> request, Action<SfbridgeReply, Exception> callback = null)
        {
            var c = _control;
            int gen = _generation;
            if (c == null)
            {
                if (callback != null)
                    Post(gen, () => callback(null, new SfbridgeException("SfbridgeStream is not connected (disabled?)")));
                return;
            }
            c.CallAsync(request).ContinueWith(t => Deliver(gen, t, callback, request), TaskContinuationOptions.ExecuteSynchronously);
        }

        void Deliver(int gen, Task<SfbridgeReply> t, Action<SfbridgeReply, Exception> callback, Dictionary<string, object> request)
        {
            Exception err = null;
            SfbridgeReply rep = null;
            if (t.IsFaulted) err = t.Exception.InnerException ?? t.Exception;
            else if (t.IsCanceled) err = new OperationCanceledException();
            else rep = t.Result;
            if (err != null && logToConsole && !(err is ObjectDisposedException))
            {
                string op = Convert.ToString(request["op"]);
                Post(gen, () => Debug.LogWarning("[sfbridge] " + op + ": " + err.Message));
            }
            if (callback != null) Post(gen, () => callback(rep, err));
        }

        /// <param name="text">the new prompt (1..4000 characters)</param>
        /// <param name="transition">"cut" (next block) or "blend" (over blendBlocks blocks)</param>
        public void SetPrompt(string text, string transition = "cut", int blendBlocks = 4,
                              Action<SfbridgeReply, Exception> callback = null)
        {
            Request(SfbridgeControl.PromptRequest(text, transition, blendBlocks), callback);
        }

        /// <summary>A prompt change with options (transition, BlendBlocks, Interp, Recache, At). Bad options
        /// throw ArgumentException here, before anything is sent.</summary>
        public void SetPrompt(string text, SfbridgePromptOptions options, Action<SfbridgeReply, Exception> callback = null)
        {
            Request(SfbridgeSteering.PromptRequest(text, options), callback);
        }

        /// <summary>A weighted prompt list (1..8 entries), combined by options.Mix; an ordinary steering
        /// change, so updating the weights mid-stream can blend, re-cache and be scheduled too.</summary>
        public void SetWeightedPrompt(IList<SfbridgeWeightedPrompt> prompts, SfbridgePromptOptions options = null,
                                      Action<SfbridgeReply, Exception> callback = null)
        {
            Request(SfbridgeSteering.WeightedPromptRequest(prompts, options), callback);
        }

        public void SetSeed(long seed, Action<SfbridgeReply, Exception> callback = null)
        {
            Request(SfbridgeControl.SeedRequest(seed), callback);
        }

        /// <summary>A seed change at a scheduled block or scene time.</summary>
        public void SetSeed(long seed, SfbridgeSchedule at, Action<SfbridgeReply, Exception> callback = null)
        {
            Request(SfbridgeSteering.SeedRequest(seed, at), callback);
        }

        /// <summary>Denoising steps, 1 to 4 strictly decreasing values (not supported by testsrc).</summary>
        public void SetSteps(int[] steps, Action<SfbridgeReply, Exception> callback = null)
        {
            Request(SfbridgeControl.StepsRequest(steps), callback);
        }

        public void SetSteps(int[] steps, SfbridgeSchedule at, Action<SfbridgeReply, Exception> callback = null)
        {
            Request(SfbridgeSteering.StepsRequest(steps, at), callback);
        }

        /// <summary>Drops a scheduled change by the state_id its reply gave (error not_found once it landed).</summary>
        public void Cancel(long stateId, Action<SfbridgeReply, Exception> callback = null)
        {
            Request(SfbridgeSteering.CancelRequest(stateId), callback);
        }

        /// <summary>The prompt options the inspector fields describe.</summary>
        public SfbridgePromptOptions InspectorPromptOptions()
        {
            var o = new SfbridgePromptOptions();
            o.Transition = SfbridgeSteering.Wire(transition);
            o.BlendBlocks = blendBlocks;
            o.Interp = SfbridgeSteering.Wire(interp);
            o.Recache = recache;
            if (applyAtBlock >= 0) o.At = SfbridgeSchedule.AtBlock(applyAtBlock);
            return o;
        }

        /// <summary>Sends the inspector's steering: one prompt as a plain prompt, several as a weighted list.</summary>
        [ContextMenu("Apply Inspector Steering")]
        public void ApplyInspectorSteering()
        {
            ApplyInspectorSteering(null);
        }

        public void ApplyInspectorSteering(Action<SfbridgeReply, Exception> callback)
        {
            if (prompts == null || prompts.Length == 0)
            {
                Debug.LogWarning("[sfbridge] no prompt in the inspector's list");
                return;
            }
            SfbridgePromptOptions o = InspectorPromptOptions();
            try
            {
                if (prompts.Length == 1 && prompts[0] != null && prompts[0].weight > 0)
                    SetPrompt(prompts[0].text, o, callback);
                else
                {
                    o.Mix = SfbridgeSteering.Wire(mix);
                    SetWeightedPrompt(prompts, o, callback);
                }
            }
            catch (ArgumentException e)
            {
                Debug.LogWarning("[sfbridge] inspector steering not sent: " + e.Message);
            }
        }

        public void Pause(Action<SfbridgeReply, Exception> callback = null)
        {
            var d = new Dictionary<string, object>();
            d["op"] = "pause";
            Request(d, callback);
        }

        public void Resume(Action<SfbridgeReply, Exception> callback = null)
        {
            var d = new Dictionary<string, object>();
            d["op"] = "resume";
            Request(d, callback);
        }

        /// <summary>New scene; prompt/seed null keep the current ones.</summary>
        public void ResetScene(string prompt = null, long? seed = null, Action<SfbridgeReply, Exception> callback = null)
        {
            Request(SfbridgeControl.ResetRequest(prompt, seed), callback);
        }

        /// <summary>The daemon's status map (PROTOCOL.md 2.3) in reply.Result.</summary>
        public void GetStatus(Action<SfbridgeReply, Exception> callback)
        {
            var d = new Dictionary<string, object>();
            d["op"] = "status";
            Request(d, callback);
        }
    }
}
