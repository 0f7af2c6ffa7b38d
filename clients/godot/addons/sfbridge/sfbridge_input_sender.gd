## Sends the game's own picture to `sfbridge serve`'s input socket for video-to-video (PROTOCOL.md,
## input frames): the generated background then follows the player's camera.
##
## Add this node and point `source` at a SubViewport (empty: the main viewport). At most `max_fps`
## times a second it takes the viewport's image, encodes it as JPEG (save_jpg_to_buffer) on a
## WorkerThreadPool task and sends [msgpack header, JPEG] over its own ZMTP PUB connection. Nothing
## in _process waits: the connection is non-blocking (StreamPeerTCP, bytes leave as the kernel takes
## them), a frame is dropped rather than queued while the previous one is still encoding or leaving,
## and the connection comes back by itself (backoff) when the daemon restarts.
## send_image() feeds any Image through the same path (what the headless test uses: headless
## rendering gives empty viewport textures).
class_name SFBridgeInputSender
extends Node

const MsgPack := preload("msgpack.gd")
const Zmtp := preload("zmtp.gd")
const MAX_SIDE := 4096

## Input endpoint of the daemon (its bound SUB socket).
@export var input_endpoint := "tcp://127.0.0.1:5557"
## Names this sender in output frame headers (`input.client`) and in error events; empty: godot-PID.
@export var client_id := ""
## SubViewport (or any Viewport) to capture; empty: the main viewport.
@export var source: NodePath
## Capture the viewport automatically; off: only send_image() sends.
@export var capture := true
## Frames sent per second at most (the model runs at 16).
@export_range(1.0, 16.0) var max_fps := 16.0
## JPEG quality 0.01..1.0 (save_jpg_to_buffer).
@export_range(0.05, 1.0) var jpeg_quality := 0.8
## Encode on a WorkerThreadPool task (off: on the main thread, for platforms without threads).
@export var threaded_encode := true
@export var autostart := true
@export var reconnect_min_ms := 100
@export var reconnect_max_ms := 2000
@export var verbose := false

var frames_sent := 0
## Frames not sent because the previous one was still encoding or leaving, or no connection was open.
var frames_dropped := 0
var connects := 0
var next_seq := 0

var _running := false
var _conn: Zmtp
var _host := ""
var _port := 0
var _retry_at_ms := 0
var _backoff_ms := 0
var _next_send_ms := 0
var _pending: Image  # newest image waiting for an encode slot (send_image / capture)
var _pending_t_cap := 0.0
var _task := -1  # WorkerThreadPool task id of the encode in flight
var _mutex := Mutex.new()
var _encoded := {}  # result of the last encode: {jpeg, w, h, t_cap}, or empty


func _enter_tree() -> void:
	if client_id == "":
		client_id = "godot-%d" % OS.get_process_id()
	if autostart:
		start()


func _exit_tree() -> void:
	stop()


## Opens the connection (idempotent). Returns false on a malformed endpoint.
func start() -> bool:
	if _running:
		return true
	var ep := Zmtp.parse_endpoint(input_endpoint, "input endpoint")
	if ep.is_empty():
		return false
	_host = ep.host
	_port = ep.port
	_running = true
	_backoff_ms = reconnect_min_ms
	_retry_at_ms = 0
	set_process(true)
	return true


func stop() -> void:
	_running = false
	if _task >= 0:
		WorkerThreadPool.wait_for_task_completion(_task)
		_task = -1
	if _conn:
		_conn.close("stopped")
		_conn = null


func is_connected_to_daemon() -> bool:
	return _conn != null and _conn.is_open()


## Queues an Image (any size up to 4096 per side; the daemon scales and centre-crops it) for the next
## send slot; a newer image replaces one still waiting. t_cap: capture time in Unix seconds (default
## now); frame headers echo it in `input` so the round trip can be measured. Returns false when the
## image cannot be sent (empty or too large).
func send_image(image: Image, t_cap := -1.0) -> bool:
	if image == null or image.is_empty() or image.get_width() > MAX_SIDE or image.get_height() > MAX_SIDE:
		push_warning("sfbridge input: image is empty or larger than %d per side; not sent" % MAX_SIDE)
		return false
	if _pending != null:
		frames_dropped += 1
	_pending = image
	_pending_t_cap = t_cap if t_cap >= 0.0 else Time.get_unix_time_from_system()
	return true


## The [header, payload] message for a JPEG of size w x h (public for tests).
static func message(jpeg: PackedByteArray, w: int, h: int, t_cap: float, client: String, seq: int) -> Array:
	var header := {"format": "jpeg", "w": w, "h": h, "t_cap": t_cap, "client": client, "seq": seq}
	return [MsgPack.encode(header), jpeg]


func _process(_delta: float) -> void:
	if not _running:
		return
	_poll_connection()
	var now := Time.get_ticks_msec()
	if capture and _pending == null and now >= _next_send_ms and _task < 0:
		_capture_viewport()
	_finish_encode()
	if _encoded.is_empty() and _task < 0 and _pending != null and now >= _next_send_ms:
		_start_encode()
	if _task < 0 and not _encoded.is_empty():  # no encode in flight: _encoded is the main thread's now
		if _conn == null or not _conn.is_open():
			frames_dropped += 1
			_encoded = {}
		elif _conn.tx_pending() == 0:
			var e := _encoded
			_encoded = {}
			if _conn.try_send_message(message(e.jpeg, e.w, e.h, e.t_cap, client_id, next_seq)):
				next_seq += 1
				frames_sent += 1
				_next_send_ms = now + int(1000.0 / clampf(max_fps, 1.0, 16.0))


func _capture_viewport() -> void:
	var vp: Viewport = get_viewport() if source.is_empty() else get_node_or_null(source) as Viewport
	if vp == null:
		return
	var tex := vp.get_texture()
	if tex == null:
		return
	var img := tex.get_image()
	if img != null and not img.is_empty():
		send_image(img)


func _start_encode() -> void:
	var img := _pending
	var t_cap := _pending_t_cap
	_pending = null
	if threaded_encode:
		_task = WorkerThreadPool.add_task(_encode.bind(img, t_cap), false, "sfbridge input jpeg")
	else:
		_encode(img, t_cap)


# Worker thread (or main thread without threaded_encode): Image -> JPEG; the result waits in _encoded.
func _encode(img: Image, t_cap: float) -> void:
	if img.get_format() != Image.FORMAT_RGB8:
		img = img.duplicate()
		img.convert(Image.FORMAT_RGB8)
	var jpeg := img.save_jpg_to_buffer(jpeg_quality)
	_mutex.lock()
	_encoded = {"jpeg": jpeg, "w": img.get_width(), "h": img.get_height(), "t_cap": t_cap} if jpeg.size() > 0 else {}
	_mutex.unlock()


func _finish_encode() -> void:
	if _task >= 0 and WorkerThreadPool.is_task_completed(_task):
		WorkerThreadPool.wait_for_task_completion(_task)
		_task = -1


func _poll_connection() -> void:
	var now := Time.get_ticks_msec()
	if _conn == null:
		if now < _retry_at_ms:
			return
		_conn = Zmtp.new()
		_conn.open(_host, _port, "PUB", 2000)
	_conn.poll()  # reads the SUB's subscription and PINGs, moves queued bytes out
	if _conn.just_opened:
		_conn.just_opened = false
		connects += 1
		_backoff_ms = reconnect_min_ms
		_log("input connected to %s:%d" % [_host, _port])
	if _conn.state == Zmtp.State.CLOSED:
		_log("input connection: %s" % _conn.error)
		_conn = null
		_retry_at_ms = now + _backoff_ms
		_backoff_ms = mini(_backoff_ms * 2, reconnect_max_ms)


func _log(msg: String) -> void:
	if verbose:
		print("[sfbridge] ", msg)

