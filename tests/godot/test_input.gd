## Headless Godot 4 test of the addon's input sender (sfbridge_input_sender.gd) against a real
## `sfbridge serve --model testsrc --input ...` (driven by tests/test_godot_client.py):
##   godot --headless --path PROJECT --script res://test_input.gd -- --control tcp://127.0.0.1:P1 \
##         --frames tcp://127.0.0.1:P2 --input tcp://127.0.0.1:P3 --width 160 --height 96
## Headless rendering gives empty viewport textures, so the script builds its pictures as Images and
## feeds them through send_image(), the same JPEG + PUB path a captured viewport takes. It switches
## v2v on (set_input), sends picture A (model size, top half red, bottom half blue) then B (twice the
## size, the other way round), submitting every tick (far faster than the 16 per second that may
## leave), and checks that rgb24 frames whose header `input` names this sender show each picture the
## right way up. Prints "OK <check> ..." lines, then "ALL_OK" (exit 0) or "FAIL <reason>" (exit 1).
## With --send-only N (no daemon, only --input at a plain libzmq SUB): sends N grey images of
## --width x --height, image i filled with value 10*i, one at a time, and exits.
extends "res://harness.gd"

const MsgPack := preload("res://addons/sfbridge/msgpack.gd")
const StreamScript := preload("res://addons/sfbridge/sfbridge_stream.gd")
const SenderScript := preload("res://addons/sfbridge/sfbridge_input_sender.gd")
const TIMEOUT_S := 60.0
const PHASE_MAX_S := 8.0
const FRAMES_PER_PHASE := 12

var args := {}
var stream: Node
var sender: Node
var width := 0
var height := 0
var elapsed := 0.0
var phase := "reply"
var phase_started := 0.0
var input_req := -1
var off_req := -1
var bad_req := -1
var replies := {}
var failures := {}
var picture: Image
var first_seq := 0
var top_sum := 0.0
var bottom_sum := 0.0
var matched := 0
var sent_at_start := 0
var rtt_sum := 0.0


func _initialize() -> void:
	args = user_args()
	width = int(args.get("width", "0"))
	height = int(args.get("height", "0"))
	message_check()
	if args.has("send-only"):
		phase = "send_only"
		sender = SenderScript.new()
		sender.input_endpoint = args.get("input", "")
		sender.client_id = "godot-input-test"
		sender.capture = false
		root.add_child(sender)
		return
	stream = StreamScript.new()
	stream.format = "rgb24"
	stream.control_endpoint = args.get("control", "")
	stream.frames_endpoint = args.get("frames", "")
	stream.reply_received.connect(func(id, _op, result): replies[id] = result)
	stream.request_failed.connect(func(id, _op, code, message): failures[id] = "%s: %s" % [code, message])
	stream.frame_received.connect(_on_frame)
	root.add_child(stream)
	sender = SenderScript.new()
	sender.input_endpoint = args.get("input", "")
	sender.client_id = "godot-input-test"
	sender.capture = false
	sender.verbose = true
	root.add_child(sender)
	bad_req = stream.set_input("v2v", 1.5)  # refused on the next frame, never sent
	input_req = stream.set_input("v2v", 0.5)


func message_check() -> void:
	var msg: Array = SenderScript.message(PackedByteArray([1, 2, 3]), 40, 24, 12.5, "me", 7)
	var dec := MsgPack.decode(msg[0])
	check(dec.ok, "header does not decode")
	var h: Dictionary = dec.value
	check(h == {"format": "jpeg", "w": 40, "h": 24, "t_cap": 12.5, "client": "me", "seq": 7}, "header %s" % h)
	check(msg[1] == PackedByteArray([1, 2, 3]), "payload")
	say("OK message")


## Top half `top`, bottom half `bottom`, w x h.
func make_picture(w: int, h: int, top: Color, bottom: Color) -> Image:
	var img := Image.create(w, h, false, Image.FORMAT_RGB8)
	img.fill_rect(Rect2i(0, 0, w, h / 2), top)
	img.fill_rect(Rect2i(0, h / 2, w, h - h / 2), bottom)
	return img


## Mean (R - B) over rows [y0, y1) (fractions of the height), middle half of the columns.
func red_minus_blue(data: PackedByteArray, w: int, h: int, y0: float, y1: float) -> float:
	var total := 0.0
	var n := 0
	for y in range(int(y0 * h), int(y1 * h)):
		for x in range(w / 4, 3 * w / 4):
			var o := (y * w + x) * 3
			total += data[o] - data[o + 2]
			n += 1
	return total / maxi(n, 1)


func start_phase(name: String) -> void:
	phase = name
	phase_started = elapsed
	first_seq = sender.next_seq + 2  # an image already encoding or leaving may take the next two
	top_sum = 0.0
	bottom_sum = 0.0
	matched = 0
	sent_at_start = sender.frames_sent
	var red := Color8(230, 20, 20)
	var blue := Color8(20, 20, 230)
	picture = make_picture(width, height, red, blue) if name == "A" else make_picture(2 * width, 2 * height, blue, red)


func _on_frame(_tex: ImageTexture, h: Dictionary) -> void:
	if phase != "A" and phase != "B":
		return
	var inp = h.get("input")
	if typeof(inp) != TYPE_DICTIONARY or inp.get("client") != sender.client_id or int(inp.get("seq", -1)) < first_seq:
		return
	var t_cap := float(inp.get("t_cap", 0.0))
	var now := Time.get_unix_time_from_system()
	if not check(t_cap > 0.0 and t_cap <= now, "input.t_cap %s is not a capture time of this run" % t_cap):
		return
	rtt_sum += now - t_cap
	var data: PackedByteArray = stream.image.get_data()
	top_sum += red_minus_blue(data, stream.image.get_width(), stream.image.get_height(), 0.1, 0.4)
	bottom_sum += red_minus_blue(data, stream.image.get_width(), stream.image.get_height(), 0.6, 0.9)
	matched += 1


func end_phase() -> bool:
	var seconds := elapsed - phase_started
	var sent: int = sender.frames_sent - sent_at_start
	if not check(matched >= 3, "phase %s: only %d output frames from this sender's input in %.1f s (sent %d, connects %d)"
			% [phase, matched, seconds, sent, sender.connects]):
		return false
	var top := top_sum / matched
	var bottom := bottom_sum / matched
	var detail := "frames %d top R-B %.1f bottom R-B %.1f sent %d in %.1f s" % [matched, top, bottom, sent, seconds]
	say("PHASE %s %s" % [phase, detail])
	var shows := top - bottom > 40.0 if phase == "A" else bottom - top > 40.0
	if not check(shows, "phase %s: the input picture does not show in the output: %s" % [phase, detail]):
		return false
	if not check(sent <= 16.0 * seconds + 3.0, "phase %s: sent %d frames in %.1f s, more than 16 per second" % [phase, sent, seconds]):
		return false
	say("OK input_shows_%s %s" % [phase, detail])
	return true


func _process(delta: float) -> bool:
	elapsed += delta
	if done:
		return true
	if elapsed > TIMEOUT_S:
		fail("timeout in phase %s (matched %d, sent %d, connects %d)" % [phase, matched, sender.frames_sent, sender.connects])
		return true
	match phase:
		"send_only":
			var n := int(args["send-only"])
			if sender.frames_sent >= n:
				if phase_started == 0.0:
					phase_started = elapsed
				elif elapsed - phase_started > 0.3:  # let the last bytes leave before quitting
					say("OK send_only sent %d connects %d" % [sender.frames_sent, sender.connects])
					say("ALL_OK")
					done = true
					quit(0)
			elif sender.next_seq == sender.frames_sent and sender.is_connected_to_daemon() and sender.frames_sent == matched:
				var img := Image.create(width, height, false, Image.FORMAT_RGB8)
				img.fill(Color8(10 * matched, 10 * matched, 10 * matched))
				sender.send_image(img, 1000.0 + matched)
				matched += 1
		"reply":
			if failures.has(input_req):
				fail("set_input failed: %s" % failures[input_req])
			elif replies.has(input_req):
				var r: Dictionary = replies[input_req]
				if not check(str(failures.get(bad_req, "")).begins_with("invalid_value"),
						"strength 1.5 was not refused: %s" % failures.get(bad_req)):
					return true
				if check(r.has("state_id") and r.has("applies_at_block"), "input reply %s" % r):
					say("OK input_reply state_id %s applies_at_block %s" % [r.state_id, r.applies_at_block])
					start_phase("A")
		"A", "B":
			sender.send_image(picture)
			if matched >= FRAMES_PER_PHASE or elapsed - phase_started > PHASE_MAX_S:
				if end_phase():
					if phase == "A":
						start_phase("B")
					else:
						check(sender.frames_dropped > 0, "submitting every tick never dropped a frame")
						say("OK rate_limited sent %d dropped %d connects %d" % [sender.frames_sent, sender.frames_dropped, sender.connects])
						phase = "off"
						off_req = stream.set_input("off")
		"off":
			if failures.has(off_req):
				fail("set_input off failed: %s" % failures[off_req])
			elif replies.has(off_req):
				say("OK input_off")
				say("ALL_OK")
				done = true
				quit(0)
	return false
