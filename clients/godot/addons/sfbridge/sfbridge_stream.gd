## Live frames from `sfbridge serve` as an ImageTexture, plus the steering API.
##
## Add this node, point `target` at a TextureRect / Sprite2D / Sprite3D (its `texture`), a
## MeshInstance3D (its material's `material_property`), or a WorldEnvironment (the sky becomes a
## PanoramaSkyMaterial with the stream as panorama), or use `texture` yourself. Everything runs in
## _process without blocking: the stream connection is read until empty every frame and only the
## newest frame is decoded (older ones are dropped). Control requests are queued, sent one at a
## time with timeout + retry (PROTOCOL.md 1.2, control_channel.gd) and answered through signals.
class_name SFBridgeStream
extends Node

const MsgPack := preload("msgpack.gd")
const Zmtp := preload("zmtp.gd")
const Steering := preload("steering.gd")
const ControlChannel := preload("control_channel.gd")
const TextureTarget := preload("texture_target.gd")
const PROTOCOL_VERSION := 1
## Pause before a retry, on top of each attempt's request_timeout_ms.
const RETRY_PAUSE_MS := ControlChannel.RETRY_PAUSE_MS

enum ConnectionState { DISCONNECTED, CONNECTING, CONNECTED }

## A new frame is on `texture` (header: the frame header map, PROTOCOL.md 3.1).
signal frame_received(texture: ImageTexture, header: Dictionary)
## A daemon event: started, applied, paused, resumed, error, stats, stopping (PROTOCOL.md 3.2).
signal event_received(event: Dictionary)
## Stream connection state changed (ConnectionState).
signal connection_state_changed(state: int)
## A request succeeded: the reply's `result` map.
signal reply_received(request_id: int, op: String, result: Dictionary)
## A request failed: code is a daemon error code (PROTOCOL.md 2.4) or "timeout" (no daemon).
signal request_failed(request_id: int, op: String, code: String, message: String)
## Convenience: the `status` map (PROTOCOL.md 2.3) after status().
signal status_received(status: Dictionary)

@export var control_endpoint := "tcp://127.0.0.1:5555"
@export var frames_endpoint := "tcp://127.0.0.1:5556"
## "jpeg" (small, decoded with Image.load_jpg_from_buffer) or "rgb24" (raw, no decoding).
@export_enum("jpeg", "rgb24") var format := "jpeg"
## Connect when the node enters the tree.
@export var autostart := true
## Node that shows the texture (TextureRect, Sprite2D/3D, MeshInstance3D, WorldEnvironment).
@export var target: NodePath
## Material property set on a MeshInstance3D target (StandardMaterial3D: albedo_texture;
## ShaderMaterial: a shader uniform name).
@export var material_property := "albedo_texture"
## Per-request timeout and attempts (PROTOCOL.md 1.2).
@export var request_timeout_ms := 2000
@export var request_attempts := 3
## Reconnect backoff of the stream connection.
@export var reconnect_min_ms := 100
@export var reconnect_max_ms := 2000
## No bytes for this long (the daemon sends stats every second) = reconnect. 0 disables.
@export var idle_timeout_ms := 5000
@export var verbose := false

@export_group("Steering")
## Prompts that apply_steering() sends: one = a plain prompt, several = a weighted list (at most 8).
@export var steer_prompts: PackedStringArray = PackedStringArray(["a beautiful landscape"])
## One weight per prompt (>= 0, not all 0; the daemon normalises them). Missing weights count 1.
@export var steer_weights: PackedFloat64Array = PackedFloat64Array()
## How several prompts combine: linear (weighted mean, norm kept) or slerp (exactly 2 prompts).
@export_enum("linear", "slerp") var steer_mix := "linear"
## cut: switch at the block where the change lands; blend: move over steer_blend_blocks blocks.
@export_enum("cut", "blend") var steer_transition := "cut"
@export_range(1, 64) var steer_blend_blocks := 4
## Path of a blend from what is on screen to the new prompt.
@export_enum("linear", "slerp") var steer_interp := "linear"
## Rebuild the attention cache of the recent frames under the new prompt where it lands (follows the
## prompt faster without a hard cut; one extra model pass).
@export var steer_recache := false
## Scheduled change: land at this block of the current scene (a block already begun = the next one).
## -1: the next block.
@export var steer_at_block := -1
## Send the steering above when the node starts.
@export var steer_on_start := false

## The texture frames are written into (null before the first frame). The same object is
## reused for the node's lifetime (updated in place; set_image() only when the size changes).
var texture: ImageTexture
## The decoded Image of the last frame (reused).
var image: Image
## Header of the last frame shown.
var last_header: Dictionary = {}
var connection_state: ConnectionState = ConnectionState.DISCONNECTED
var frames_received := 0
var frames_shown := 0
var frames_dropped := 0
var connects := 0
var events_received := 0
## The routing id the control connection announces (READY Identity) on every (re)connect: "sfb" + 13
## random bytes, one per node. Keeping it across the Lazy Pirate reconnects lets the daemon answer a
## retry of a request it already handled from memory instead of applying it twice (PROTOCOL.md 2.1.1).
## Read-only (a copy).
var routing_id: PackedByteArray:
	get:
		return _requests.routing_id

var _running := false
var _stream: Zmtp
var _stream_host := ""
var _stream_port := 0
var _retry_at_ms := 0
var _backoff_ms := 0
var _pinged := false
var _last_stream := ""
var _last_seq := -1
var _warned_version := false

var _requests: ControlChannel


func _init() -> void:
	_requests = ControlChannel.new(_log)
	_requests.replied.connect(_on_replied)
	_requests.failed.connect(_emit_failed)


func _enter_tree() -> void:
	if autostart:
		start()


func _exit_tree() -> void:
	stop()


## Opens the connections (idempotent). Returns false on a malformed endpoint.
func start() -> bool:
	if _running:
		return true
	var s := Zmtp.parse_endpoint(frames_endpoint)
	var c := Zmtp.parse_endpoint(control_endpoint)
	if s.is_empty() or c.is_empty():
		return false
	_stream_host = s.host
	_stream_port = s.port
	_requests.set_address(c.host, c.port)
	_running = true
	_backoff_ms = reconnect_min_ms
	_retry_at_ms = 0
	set_process(true)
	if steer_on_start:
		apply_steering()
	return true


## Closes both connections; pending requests fail with code "cancelled".
func stop() -> void:
	_running = false
	if _stream:
		_stream.close("stopped")
		_stream = null
	_requests.cancel_all("SFBridgeStream stopped")
	_set_state(ConnectionState.DISCONNECTED)


func is_stream_connected() -> bool:
	return connection_state == ConnectionState.CONNECTED


# ------------------------------------------------------------------ steering API
# Every call returns a request id at once; the answer comes as reply_received or request_failed.


## Changes the prompt. Either set_prompt(text, "cut" | "blend", blend_blocks) as before, or
## set_prompt(text, options) with an options Dictionary: transition ("cut" | "blend"), blend_blocks
## (1..64), interp ("linear" | "slerp": the blend path), recache (bool), at_block (block of the scene)
## or at_pts (scene seconds). The reply's result has state_id, applies_at_block and scheduled. Bad
## options fail at once: request_failed with code "invalid_value", nothing is sent.
func set_prompt(text: String, transition: Variant = "cut", blend_blocks := 4) -> int:
	var options: Dictionary = transition if typeof(transition) == TYPE_DICTIONARY \
		else {"transition": str(transition), "blend_blocks": blend_blocks}
	var args := {}
	var err := Steering.check_text(text, "text")
	if err == "":
		args["text"] = text
		err = Steering.prompt_options(args, options, 0)
	return _refuse("prompt", err) if err != "" else request("prompt", args)


## A weighted prompt list: 1..8 entries, each [text, weight] or {"text": ..., "weight": ...}, weights
## >= 0 and not all 0. options as for set_prompt, plus mix ("linear" | "slerp" for exactly 2 entries).
## Updating the weights mid-stream is an ordinary change: it can blend, re-cache and be scheduled.
func set_weighted_prompt(prompts: Array, options := {}) -> int:
	var entries: Array = []
	var err := Steering.weighted_entries(prompts, entries)
	var args := {"prompts": entries}
	if err == "":
		err = Steering.prompt_options(args, options, entries.size())
	return _refuse("prompt", err) if err != "" else request("prompt", args)


## Sends the exported steer_* properties: one prompt as a plain prompt, several as a weighted list.
func apply_steering() -> int:
	var options := {"transition": steer_transition, "blend_blocks": steer_blend_blocks, "interp": steer_interp,
		"recache": steer_recache, "at_block": steer_at_block}
	if steer_prompts.size() == 1 and (steer_weights.is_empty() or steer_weights[0] > 0.0):
		return set_prompt(steer_prompts[0], options)
	var prompts: Array = []
	for i in range(steer_prompts.size()):
		prompts.append([steer_prompts[i], steer_weights[i] if i < steer_weights.size() else 1.0])
	options["mix"] = steer_mix
	return set_weighted_prompt(prompts, options)


## Re-seeds the noise at the next block, or at block at_block / scene time at_pts (>= 0) when given.
func set_seed(seed_value: int, at_block := -1, at_pts := -1.0) -> int:
	var args := {"seed": seed_value}
	var err := Steering.schedule(args, at_block, at_pts)
	if seed_value < 0:
		err = "seed must be in 0..2^63-1, got %d" % seed_value
	return _refuse("seed", err) if err != "" else request("seed", args)


## Denoising steps, 1..4 strictly decreasing values (not supported by testsrc); schedulable like set_seed.
func set_steps(steps: Array, at_block := -1, at_pts := -1.0) -> int:
	var args := {"steps": steps}
	var err := Steering.schedule(args, at_block, at_pts)
	return _refuse("steps", err) if err != "" else request("steps", args)


## Drops a scheduled change by the state_id its reply gave; result {cancelled: state_id}, or
## request_failed with code "not_found" once it has landed (or for an unknown id).
func cancel(state_id: int) -> int:
	if state_id < 0:
		return _refuse("cancel", "state_id must be >= 0, got %d" % state_id)
	return request("cancel", {"state_id": state_id})


## Video-to-video from the frames an SFBridgeInputSender sends: mode "v2v" or "off"; strength 0..1 (1 =
## text-to-video, lower follows the input more); motion_adaptive lowers it while the input moves a lot.
## Schedulable like set_seed; the reply has state_id and applies_at_block.
func set_input(mode: String, strength := 0.7, motion_adaptive := false, at_block := -1, at_pts := -1.0) -> int:
	var args := {"mode": mode, "strength": strength, "motion_adaptive": motion_adaptive}
	var err := Steering.schedule(args, at_block, at_pts)
	if mode != "v2v" and mode != "off":
		err = "mode must be v2v or off, got '%s'" % mode
	elif is_nan(strength) or strength < 0.0 or strength > 1.0:
		err = "strength must be in 0..1, got %s" % strength
	return _refuse("input", err) if err != "" else request("input", args)


func pause() -> int:
	return request("pause")


func resume() -> int:
	return request("resume")


## New scene; an empty prompt / negative seed keep the current ones.
func reset(prompt := "", seed_value := -1) -> int:
	var args := {}
	if prompt != "":
		args["prompt"] = prompt
	if seed_value >= 0:
		args["seed"] = seed_value
	return request("reset", args)


func status() -> int:
	return request("status")


func ping() -> int:
	return request("ping")


## Sends any op with arguments. Returns the request id.
func request(op: String, args := {}) -> int:
	return _requests.request(op, args)


# ------------------------------------------------------------------ internals


## A request refused before sending: request_failed(id, op, "invalid_value", why) on the next frame.
func _refuse(op: String, why: String) -> int:
	return _requests.refuse(op, why)


func _emit_failed(id: int, op: String, code: String, message: String) -> void:
	request_failed.emit(id, op, code, message)


func _on_replied(id: int, op: String, result: Dictionary) -> void:
	reply_received.emit(id, op, result)
	if op == "status":
		status_received.emit(result)


func _log(msg: String) -> void:
	if verbose:
		print("[sfbridge] ", msg)


func _set_state(s: ConnectionState) -> void:
	if s != connection_state:
		connection_state = s
		connection_state_changed.emit(s)


func _process(_delta: float) -> void:
	if not _running:
		return
	_poll_stream()
	_requests.timeout_ms = request_timeout_ms
	_requests.attempts = request_attempts
	_requests.endpoint = control_endpoint
	_requests.poll()


func _poll_stream() -> void:
	var now := Time.get_ticks_msec()
	if _stream == null:
		if now < _retry_at_ms:
			return
		_stream = Zmtp.new()
		_stream.open(_stream_host, _stream_port, "SUB", 2000)
		_pinged = false
		_set_state(ConnectionState.CONNECTING)
	var messages: Array = _stream.poll()
	if _stream.just_opened:
		_stream.just_opened = false
		_stream.subscribe(format)
		_stream.subscribe("event")
		connects += 1
		_backoff_ms = reconnect_min_ms
		_set_state(ConnectionState.CONNECTED)
		_log("stream connected to %s:%d" % [_stream_host, _stream_port])
	var newest: Array = []
	var newest_header: Dictionary = {}
	for m in messages:
		if m.size() != 3:
			continue
		var topic: String = (m[0] as PackedByteArray).get_string_from_ascii()
		var dec := MsgPack.decode(m[1])
		if not dec.ok or typeof(dec.value) != TYPE_DICTIONARY:
			_log("ignoring a message with a bad header on '%s'" % topic)
			continue
		var h: Dictionary = dec.value
		_check_version(h)
		if topic == "event":
			events_received += 1
			event_received.emit(h)
			continue
		if topic != format:
			continue
		var stream_id: String = str(h.get("stream", ""))
		var seq: int = int(h.get("seq", -1))
		# Repeats (last-value cache) and older frames are dropped; a new daemon has a new stream id.
		if stream_id == _last_stream and seq <= _last_seq:
			continue
		_last_stream = stream_id
		_last_seq = seq
		frames_received += 1
		if not newest.is_empty():
			frames_dropped += 1
		newest = m
		newest_header = h
	if not newest.is_empty():
		_show(newest_header, newest[2])
	if _stream.state == Zmtp.State.OPEN:
		var idle := now - _stream.last_rx_ms
		if idle_timeout_ms > 0 and idle > idle_timeout_ms:
			_stream.close("no data for %d ms" % idle)
		elif idle > 1500 and not _pinged:
			_stream.send_ping()
			_pinged = true
		elif idle < 1500:
			_pinged = false
	if _stream.state == Zmtp.State.CLOSED:
		_log("stream: %s; retry in %d ms" % [_stream.error, _backoff_ms])
		_stream = null
		_retry_at_ms = now + _backoff_ms
		_backoff_ms = mini(reconnect_max_ms, _backoff_ms * 2)
		_set_state(ConnectionState.DISCONNECTED)


func _check_version(m: Dictionary) -> void:
	var v := int(m.get("v", PROTOCOL_VERSION))
	if v != PROTOCOL_VERSION and not _warned_version:
		_warned_version = true
		push_warning("sfbridge: daemon speaks protocol %d, this client knows %d; carrying on" % [v, PROTOCOL_VERSION])


func _show(h: Dictionary, payload: PackedByteArray) -> void:
	var w := int(h.get("w", 0))
	var hgt := int(h.get("h", 0))
	if image == null:
		image = Image.new()
	if format == "rgb24":
		if w <= 0 or hgt <= 0 or payload.size() != w * hgt * 3:
			_log("ignoring an rgb24 frame of %d bytes for %dx%d" % [payload.size(), w, hgt])
			return
		image.set_data(w, hgt, false, Image.FORMAT_RGB8, payload)
	else:
		var err := image.load_jpg_from_buffer(payload)
		if err != OK:
			_log("could not decode JPEG seq %s: %s" % [h.get("seq"), error_string(err)])
			return
	if texture == null:
		texture = ImageTexture.create_from_image(image)
		_assign_target()
	elif texture.get_width() != image.get_width() or texture.get_height() != image.get_height() \
			or texture.get_format() != image.get_format():
		texture.set_image(image)  # same resource, new size
	else:
		texture.update(image)
	last_header = h
	frames_shown += 1
	frame_received.emit(texture, h)


## (Re)applies `texture` to `target`; call after changing `target`.
func _assign_target() -> void:
	if texture == null or target.is_empty():
		return
	var node := get_node_or_null(target)
	if node == null:
		push_warning("sfbridge: target %s not found" % target)
		return
	TextureTarget.show_on(node, texture, material_property)


func assign_target() -> void:
	_assign_target()
