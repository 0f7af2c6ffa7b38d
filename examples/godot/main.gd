## sfbridge example: the stream fills the window; type a prompt and press Enter or "Send".
## "Restyle game" sends the little game in the Game SubViewport (arrow keys move the red player; the
## inset top right shows it raw) to the daemon's input socket and switches video-to-video on, so the
## stream restyles the game's own picture. The prompt bar and status line sit at the bottom: the
## stream burns its own title into the top.
## Command-line overrides (after `--`): --control / --frames / --input tcp://HOST:PORT, --v2v (start
## with "Restyle game" on), --smoke-test N (quit with "EXAMPLE_OK" after N frames, with --v2v after N
## frames made in v2v mode; used by the tests).
extends Control

# preload instead of the global class name SFBridgeStream, so the scene also runs in a project
# that the editor has not imported yet (e.g. `godot --headless --path examples/godot`).
const SFBridgeStreamScript := preload("res://addons/sfbridge/sfbridge_stream.gd")

@onready var stream: Node = $SFBridgeStream
@onready var prompt_box: LineEdit = $Bar/Prompt
@onready var blend_box: CheckBox = $Bar/Blend
@onready var v2v_box: CheckBox = $Bar/V2V
@onready var status_label: Label = $Status
@onready var sender: Node = $InputSender
@onready var player: ColorRect = $Game/Player

var _smoke_frames := 0
var _info := ""
var _v2v_at_start := false
var _auto_dir := Vector2(1, 0.6)


func _enter_tree() -> void:
	# Endpoints must be set before the stream node enters the tree (it connects then).
	var a := OS.get_cmdline_user_args()
	for i in a.size() - 1:
		match a[i]:
			"--control":
				$SFBridgeStream.control_endpoint = a[i + 1]
			"--frames":
				$SFBridgeStream.frames_endpoint = a[i + 1]
			"--input":
				$InputSender.input_endpoint = a[i + 1]
			"--smoke-test":
				_smoke_frames = int(a[i + 1])
	_v2v_at_start = "--v2v" in a


func _ready() -> void:
	prompt_box.text_submitted.connect(func(_t): _send())
	$Bar/Send.pressed.connect(_send)
	stream.frame_received.connect(_on_frame)
	stream.connection_state_changed.connect(_on_state)
	stream.reply_received.connect(_on_reply)
	stream.request_failed.connect(_on_failed)
	stream.event_received.connect(_on_event)
	v2v_box.toggled.connect(_on_v2v)
	$Inset.texture = $Game.get_texture()
	if _v2v_at_start:
		v2v_box.button_pressed = true  # emits toggled -> _on_v2v


func _process(delta: float) -> void:
	var dir := Input.get_vector("ui_left", "ui_right", "ui_up", "ui_down")
	if dir == Vector2.ZERO:
		dir = _auto_dir  # nobody playing: the player wanders so the restyled picture moves
	player.position += dir * 220.0 * delta
	var bounds := Vector2($Game.size) - player.size
	if player.position.x < 0 or player.position.x > bounds.x:
		_auto_dir.x = -_auto_dir.x
	if player.position.y < 0 or player.position.y > bounds.y:
		_auto_dir.y = -_auto_dir.y
	player.position = player.position.clamp(Vector2.ZERO, bounds)


func _on_v2v(on: bool) -> void:
	# Capture and send the Game viewport at <= 16 fps only while v2v is on; the daemon restyles it.
	sender.capture = on
	stream.set_input("v2v" if on else "off", 0.6)


func _send() -> void:
	var text := prompt_box.text.strip_edges()
	if text == "":
		return
	stream.set_prompt(text, "blend" if blend_box.button_pressed else "cut", 4)


func _on_frame(texture: ImageTexture, header: Dictionary) -> void:
	var latency_ms := (Time.get_unix_time_from_system() - float(header.get("t_pub", 0.0))) * 1000.0
	status_label.text = "%dx%d  seq %d  state %d  latency %.1f ms  %s" % [
		texture.get_width(), texture.get_height(), header.get("seq", 0), header.get("state", 0), latency_ms, _info]
	var mode: String = str(header.get("input_mode", "off"))
	if _v2v_at_start and mode != "v2v":
		return  # the smoke test counts frames made in v2v mode
	if _smoke_frames > 0 and stream.frames_shown >= _smoke_frames:
		print("EXAMPLE_OK frames=%d size=%dx%d input_mode=%s sent=%d" % [stream.frames_shown, texture.get_width(),
			texture.get_height(), mode, sender.frames_sent])
		_smoke_frames = 0
		get_tree().quit(0)


func _on_state(state: int) -> void:
	if state != SFBridgeStreamScript.ConnectionState.CONNECTED:
		status_label.text = ["disconnected (is `sfbridge serve` running?)", "connecting...", "connected"][state]


func _on_reply(_id: int, op: String, result: Dictionary) -> void:
	if op == "prompt" or op == "input":
		_info = "%s -> state %s at block %s" % [op, result.get("state_id"), result.get("applies_at_block")]


func _on_failed(_id: int, op: String, code: String, message: String) -> void:
	_info = "%s failed: %s %s" % [op, code, message]
	push_warning(_info)


func _on_event(event: Dictionary) -> void:
	if event.get("type") == "error":
		_info = "daemon error: %s" % event.get("message", "")
