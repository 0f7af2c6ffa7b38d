## sfbridge example: the stream fills the window; type a prompt and press Enter or "Send".
## The prompt bar and status line sit at the bottom: the stream burns its own title into the top.
## Command-line overrides (after `--`): --control tcp://HOST:PORT --frames tcp://HOST:PORT,
## --smoke-test N (quit with "EXAMPLE_OK" after N frames; used by the tests).
extends Control

# preload instead of the global class name SFBridgeStream, so the scene also runs in a project
# that the editor has not imported yet (e.g. `godot --headless --path examples/godot`).
const SFBridgeStreamScript := preload("res://addons/sfbridge/sfbridge_stream.gd")

@onready var stream: Node = $SFBridgeStream
@onready var prompt_box: LineEdit = $Bar/Prompt
@onready var blend_box: CheckBox = $Bar/Blend
@onready var status_label: Label = $Status

var _smoke_frames := 0
var _info := ""


func _enter_tree() -> void:
	# Endpoints must be set before the stream node enters the tree (it connects then).
	var a := OS.get_cmdline_user_args()
	for i in a.size() - 1:
		match a[i]:
			"--control":
				$SFBridgeStream.control_endpoint = a[i + 1]
			"--frames":
				$SFBridgeStream.frames_endpoint = a[i + 1]
			"--smoke-test":
				_smoke_frames = int(a[i + 1])


func _ready() -> void:
	prompt_box.text_submitted.connect(func(_t): _send())
	$Bar/Send.pressed.connect(_send)
	stream.frame_received.connect(_on_frame)
	stream.connection_state_changed.connect(_on_state)
	stream.reply_received.connect(_on_reply)
	stream.request_failed.connect(_on_failed)
	stream.event_received.connect(_on_event)


func _send() -> void:
	var text := prompt_box.text.strip_edges()
	if text == "":
		return
	stream.set_prompt(text, "blend" if blend_box.button_pressed else "cut", 4)


func _on_frame(texture: ImageTexture, header: Dictionary) -> void:
	var latency_ms := (Time.get_unix_time_from_system() - float(header.get("t_pub", 0.0))) * 1000.0
	status_label.text = "%dx%d  seq %d  state %d  latency %.1f ms  %s" % [
		texture.get_width(), texture.get_height(), header.get("seq", 0), header.get("state", 0), latency_ms, _info]
	if _smoke_frames > 0 and stream.frames_shown >= _smoke_frames:
		print("EXAMPLE_OK frames=%d size=%dx%d" % [stream.frames_shown, texture.get_width(), texture.get_height()])
		_smoke_frames = 0
		get_tree().quit(0)


func _on_state(state: int) -> void:
	if state != SFBridgeStreamScript.ConnectionState.CONNECTED:
		status_label.text = ["disconnected (is `sfbridge serve` running?)", "connecting...", "connected"][state]


func _on_reply(_id: int, op: String, result: Dictionary) -> void:
	if op == "prompt":
		_info = "prompt -> state %s at block %s" % [result.get("state_id"), result.get("applies_at_block")]


func _on_failed(_id: int, op: String, code: String, message: String) -> void:
	_info = "%s failed: %s %s" % [op, code, message]
	push_warning(_info)


func _on_event(event: Dictionary) -> void:
	if event.get("type") == "error":
		_info = "daemon error: %s" % event.get("message", "")
