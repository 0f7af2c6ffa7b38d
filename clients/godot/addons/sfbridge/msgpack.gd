## MessagePack subset for the sfbridge protocol (pure GDScript, no engine extensions).
##
## Decodes nil, bool, every int width, float32/float64, str, bin, array, map (ext values become
## a Dictionary {"ext": type, "data": PackedByteArray}). Maps come back as Dictionary, arrays as
## Array, bin as PackedByteArray. Note: GDScript ints are signed 64-bit, so uint64 values above
## 2^63-1 wrap around (the protocol never sends such values).
extends RefCounted

const MAX_DEPTH := 64


## Encodes a Variant (null, bool, int, float, String/StringName, PackedByteArray, Array,
## Dictionary) into msgpack bytes. Floats are written as float64.
static func encode(value) -> PackedByteArray:
	var out := PackedByteArray()
	_write(out, value)
	return out


## Decodes one value from the whole buffer. Returns {"ok": true, "value": v} or
## {"ok": false, "error": "..."}.
static func decode(buf: PackedByteArray) -> Dictionary:
	var st := {"pos": 0, "err": "", "depth": 0}
	var v = _read(buf, st)
	if st.err != "":
		return {"ok": false, "error": st.err}
	if st.pos != buf.size():
		return {"ok": false, "error": "trailing bytes after msgpack value"}
	return {"ok": true, "value": v}


static func _put_be(out: PackedByteArray, v: int, n: int) -> void:
	for i in range(n - 1, -1, -1):
		out.append((v >> (8 * i)) & 0xff)


static func _write(out: PackedByteArray, v) -> void:
	match typeof(v):
		TYPE_NIL:
			out.append(0xc0)
		TYPE_BOOL:
			out.append(0xc3 if v else 0xc2)
		TYPE_INT:
			_write_int(out, v)
		TYPE_FLOAT:
			var tmp := PackedByteArray()
			tmp.resize(8)
			tmp.encode_double(0, v)
			out.append(0xcb)
			for i in range(7, -1, -1):
				out.append(tmp[i])
		TYPE_STRING, TYPE_STRING_NAME:
			var b: PackedByteArray = String(v).to_utf8_buffer()
			var n := b.size()
			if n <= 31:
				out.append(0xa0 | n)
			elif n <= 0xff:
				out.append(0xd9)
				_put_be(out, n, 1)
			elif n <= 0xffff:
				out.append(0xda)
				_put_be(out, n, 2)
			else:
				out.append(0xdb)
				_put_be(out, n, 4)
			out.append_array(b)
		TYPE_PACKED_BYTE_ARRAY:
			var n: int = v.size()
			if n <= 0xff:
				out.append(0xc4)
				_put_be(out, n, 1)
			elif n <= 0xffff:
				out.append(0xc5)
				_put_be(out, n, 2)
			else:
				out.append(0xc6)
				_put_be(out, n, 4)
			out.append_array(v)
		TYPE_ARRAY, TYPE_PACKED_INT32_ARRAY, TYPE_PACKED_INT64_ARRAY, TYPE_PACKED_FLOAT64_ARRAY, \
		TYPE_PACKED_FLOAT32_ARRAY, TYPE_PACKED_STRING_ARRAY:
			var n: int = v.size()
			if n <= 15:
				out.append(0x90 | n)
			elif n <= 0xffff:
				out.append(0xdc)
				_put_be(out, n, 2)
			else:
				out.append(0xdd)
				_put_be(out, n, 4)
			for item in v:
				_write(out, item)
		TYPE_DICTIONARY:
			var n: int = v.size()
			if n <= 15:
				out.append(0x80 | n)
			elif n <= 0xffff:
				out.append(0xde)
				_put_be(out, n, 2)
			else:
				out.append(0xdf)
				_put_be(out, n, 4)
			for k in v:
				_write(out, k)
				_write(out, v[k])
		_:
			push_error("sfbridge msgpack: cannot encode a value of type %s" % type_string(typeof(v)))
			out.append(0xc0)


static func _write_int(out: PackedByteArray, v: int) -> void:
	if v >= 0:
		if v <= 0x7f:
			out.append(v)
		elif v <= 0xff:
			out.append(0xcc)
			_put_be(out, v, 1)
		elif v <= 0xffff:
			out.append(0xcd)
			_put_be(out, v, 2)
		elif v <= 0xffffffff:
			out.append(0xce)
			_put_be(out, v, 4)
		else:
			out.append(0xcf)
			_put_be(out, v, 8)
	else:
		if v >= -32:
			out.append(v & 0xff)
		elif v >= -128:
			out.append(0xd0)
			_put_be(out, v, 1)
		elif v >= -32768:
			out.append(0xd1)
			_put_be(out, v, 2)
		elif v >= -2147483648:
			out.append(0xd2)
			_put_be(out, v, 4)
		else:
			out.append(0xd3)
			_put_be(out, v, 8)


static func _need(buf: PackedByteArray, st: Dictionary, n: int) -> bool:
	if st.err != "":
		return false
	if n < 0 or st.pos + n > buf.size():
		st.err = "truncated msgpack data"
		return false
	return true


static func _uint(buf: PackedByteArray, st: Dictionary, n: int) -> int:
	if not _need(buf, st, n):
		return 0
	var v := 0
	for i in n:
		v = (v << 8) | buf[st.pos + i]
	st.pos += n
	return v


static func _sint(buf: PackedByteArray, st: Dictionary, n: int) -> int:
	var v := _uint(buf, st, n)
	if n < 8 and v >= (1 << (8 * n - 1)):
		v -= (1 << (8 * n))
	return v


static func _bytes(buf: PackedByteArray, st: Dictionary, n: int) -> PackedByteArray:
	if not _need(buf, st, n):
		return PackedByteArray()
	var b := buf.slice(st.pos, st.pos + n)
	st.pos += n
	return b


static func _float(buf: PackedByteArray, st: Dictionary, n: int) -> float:
	if not _need(buf, st, n):
		return 0.0
	var tmp := PackedByteArray()
	tmp.resize(n)
	for i in n:
		tmp[i] = buf[st.pos + n - 1 - i]  # big-endian on the wire, little-endian decode_*
	st.pos += n
	return tmp.decode_float(0) if n == 4 else tmp.decode_double(0)


static func _read(buf: PackedByteArray, st: Dictionary):
	if not _need(buf, st, 1):
		return null
	var t: int = buf[st.pos]
	st.pos += 1
	if t <= 0x7f:
		return t
	if t >= 0xe0:
		return t - 256
	if (t & 0xf0) == 0x80:
		return _map(buf, st, t & 0x0f)
	if (t & 0xf0) == 0x90:
		return _array(buf, st, t & 0x0f)
	if (t & 0xe0) == 0xa0:
		return _bytes(buf, st, t & 0x1f).get_string_from_utf8()
	match t:
		0xc0:
			return null
		0xc2:
			return false
		0xc3:
			return true
		0xc4:
			return _bytes(buf, st, _uint(buf, st, 1))
		0xc5:
			return _bytes(buf, st, _uint(buf, st, 2))
		0xc6:
			return _bytes(buf, st, _uint(buf, st, 4))
		0xc7:
			return _ext(buf, st, _uint(buf, st, 1))
		0xc8:
			return _ext(buf, st, _uint(buf, st, 2))
		0xc9:
			return _ext(buf, st, _uint(buf, st, 4))
		0xca:
			return _float(buf, st, 4)
		0xcb:
			return _float(buf, st, 8)
		0xcc:
			return _uint(buf, st, 1)
		0xcd:
			return _uint(buf, st, 2)
		0xce:
			return _uint(buf, st, 4)
		0xcf:
			return _uint(buf, st, 8)
		0xd0:
			return _sint(buf, st, 1)
		0xd1:
			return _sint(buf, st, 2)
		0xd2:
			return _sint(buf, st, 4)
		0xd3:
			return _sint(buf, st, 8)
		0xd4:
			return _ext(buf, st, 1)
		0xd5:
			return _ext(buf, st, 2)
		0xd6:
			return _ext(buf, st, 4)
		0xd7:
			return _ext(buf, st, 8)
		0xd8:
			return _ext(buf, st, 16)
		0xd9:
			return _bytes(buf, st, _uint(buf, st, 1)).get_string_from_utf8()
		0xda:
			return _bytes(buf, st, _uint(buf, st, 2)).get_string_from_utf8()
		0xdb:
			return _bytes(buf, st, _uint(buf, st, 4)).get_string_from_utf8()
		0xdc:
			return _array(buf, st, _uint(buf, st, 2))
		0xdd:
			return _array(buf, st, _uint(buf, st, 4))
		0xde:
			return _map(buf, st, _uint(buf, st, 2))
		0xdf:
			return _map(buf, st, _uint(buf, st, 4))
	st.err = "invalid msgpack type byte 0x%02x" % t
	return null


static func _ext(buf: PackedByteArray, st: Dictionary, n: int):
	if not _need(buf, st, 1):
		return null
	var type: int = buf[st.pos]
	st.pos += 1
	if type >= 128:
		type -= 256
	return {"ext": type, "data": _bytes(buf, st, n)}


static func _array(buf: PackedByteArray, st: Dictionary, n: int):
	st.depth += 1
	if st.depth > MAX_DEPTH:
		st.err = "msgpack nesting too deep"
		return null
	if not _need(buf, st, n):  # every element takes at least one byte
		return null
	var a := []
	for i in n:
		a.append(_read(buf, st))
		if st.err != "":
			return null
	st.depth -= 1
	return a


static func _map(buf: PackedByteArray, st: Dictionary, n: int):
	st.depth += 1
	if st.depth > MAX_DEPTH:
		st.err = "msgpack nesting too deep"
		return null
	if not _need(buf, st, n):
		return null
	var d := {}
	for i in n:
		var k = _read(buf, st)
		var v = _read(buf, st)
		if st.err != "":
			return null
		d[k] = v
	st.depth -= 1
	return d
