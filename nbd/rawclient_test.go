package nbd_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Protocol values, written out again from the spec so the tests check the
// server's constants instead of reusing them.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10

	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4
	repErrUnsup    = 1<<31 | 1
	repErrInvalid  = 1<<31 | 3
	repErrUnknown  = 1<<31 | 6

	infoExport    = 0
	infoName      = 1
	infoDescr     = 2
	infoBlockSize = 3

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	flagFUA    = 1 << 0
	flagNoHole = 1 << 1
	flagDF     = 1 << 2
	flagReqOne = 1 << 3

	tflagReadOnly  = 1 << 1
	tflagSendFlush = 1 << 2
	tflagSendFUA   = 1 << 3
	tflagSendTrim  = 1 << 5
	tflagSendZero  = 1 << 6
	tflagSendDF    = 1 << 7
	tflagMultiConn = 1 << 8

	chunkNone        = 0
	chunkOffsetData  = 1
	chunkOffsetHole  = 2
	chunkBlockStatus = 5
	chunkError       = 1<<15 | 1
	chunkErrorOffset = 1<<15 | 2

	ePERM     = 1
	eIO       = 5
	eINVAL    = 22
	eNOSPC    = 28
	eSHUTDOWN = 108
	doneFlg   = 1
)

// client is a raw-socket NBD client for protocol tests.
type client struct {
	t          testing.TB
	nc         net.Conn
	br         *bufio.Reader
	structured bool
	mu         sync.Mutex
	reads      map[uint64]uint32 // pending READ lengths, for simple replies
	handle     uint64
}

// dial connects and does the fixed newstyle greeting with NO_ZEROES.
func dial(t testing.TB, addr string) *client {
	t.Helper()
	c := dialRaw(t, addr)
	c.write(binary.BigEndian.AppendUint32(nil, 3))
	return c
}

// dialRaw connects (to unix:PATH or HOST:PORT) and reads the server's
// greeting.
func dialRaw(t testing.TB, addr string) *client {
	t.Helper()
	network := "tcp"
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", path
	}
	nc, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	c := &client{t: t, nc: nc, br: bufio.NewReader(nc), reads: map[uint64]uint32{}}
	var g [18]byte
	c.readFull(g[:])
	if string(g[:8]) != "NBDMAGIC" || string(g[8:16]) != "IHAVEOPT" {
		t.Fatalf("greeting %q", g)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != 3 {
		t.Fatalf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", f)
	}
	return c
}

func (c *client) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) readFull(b []byte) {
	c.t.Helper()
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatalf("read: %v", err)
	}
}

// sendOption sends one option.
func (c *client) sendOption(opt uint32, data []byte) {
	b := binary.BigEndian.AppendUint64(nil, 0x49484156454F5054)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *client) readOptReply() optReply {
	c.t.Helper()
	var h [20]byte
	c.readFull(h[:])
	if m := binary.BigEndian.Uint64(h[:]); m != 0x3e889045565a9 {
		c.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	c.readFull(r.data)
	return r
}

// option sends an option and collects replies up to the final ACK or error.
func (c *client) option(opt uint32, data []byte) []optReply {
	c.t.Helper()
	c.sendOption(opt, data)
	var out []optReply
	for {
		r := c.readOptReply()
		if r.opt != opt {
			c.t.Fatalf("reply for option %d, sent %d", r.opt, opt)
		}
		out = append(out, r)
		if r.typ == repAck || r.typ&(1<<31) != 0 {
			return out
		}
	}
}

func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// goExport enters transmission with NBD_OPT_GO and returns the size and
// transmission flags.
func (c *client) goExport(name string, infos ...uint16) (uint64, uint16) {
	c.t.Helper()
	replies := c.option(optGo, infoData(name, infos...))
	last := replies[len(replies)-1]
	if last.typ != repAck {
		c.t.Fatalf("NBD_OPT_GO %q: reply %#x %q", name, last.typ, last.data)
	}
	for _, r := range replies {
		if r.typ == repInfo && binary.BigEndian.Uint16(r.data) == infoExport {
			return binary.BigEndian.Uint64(r.data[2:]), binary.BigEndian.Uint16(r.data[10:])
		}
	}
	c.t.Fatal("no NBD_INFO_EXPORT before the ACK")
	return 0, 0
}

// negotiateStructured asks for structured replies.
func (c *client) negotiateStructured() {
	c.t.Helper()
	if r := c.option(optStructuredReply, nil); r[0].typ != repAck {
		c.t.Fatalf("structured reply refused: %#x", r[0].typ)
	}
	c.structured = true
}

// send sends a request and returns its handle.
func (c *client) send(typ, flags uint16, off uint64, length uint32, payload []byte) uint64 {
	c.t.Helper()
	c.mu.Lock()
	c.handle++
	h := c.handle
	if typ == cmdRead {
		c.reads[h] = length
	}
	c.mu.Unlock()
	b := binary.BigEndian.AppendUint32(nil, 0x25609513)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, h)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	c.write(append(b, payload...))
	return h
}

// reply is one simple reply or one structured chunk.
type reply struct {
	handle     uint64
	structured bool
	flags      uint16
	chunk      uint16
	errno      uint32
	msg        string
	offset     uint64
	data       []byte      // READ data (simple) or OFFSET_DATA payload
	context    uint32      // BLOCK_STATUS
	desc       [][2]uint32 // BLOCK_STATUS descriptors: length, flags
}

var errClosed = errors.New("connection closed")

// next reads one reply message.
func (c *client) next() (reply, error) {
	var r reply
	var m [4]byte
	if _, err := io.ReadFull(c.br, m[:]); err != nil {
		return r, errClosed
	}
	switch binary.BigEndian.Uint32(m[:]) {
	case 0x67446698:
		var h [12]byte
		c.readFull(h[:])
		r.errno, r.handle = binary.BigEndian.Uint32(h[:]), binary.BigEndian.Uint64(h[4:])
		c.mu.Lock()
		n, isRead := c.reads[r.handle]
		delete(c.reads, r.handle)
		c.mu.Unlock()
		if isRead && r.errno == 0 {
			r.data = make([]byte, n)
			c.readFull(r.data)
		}
		return r, nil
	case 0x668e33ef:
		var h [16]byte
		c.readFull(h[:])
		r.structured = true
		r.flags, r.chunk = binary.BigEndian.Uint16(h[:]), binary.BigEndian.Uint16(h[2:])
		r.handle = binary.BigEndian.Uint64(h[4:])
		p := make([]byte, binary.BigEndian.Uint32(h[12:]))
		c.readFull(p)
		switch r.chunk {
		case chunkOffsetData:
			r.offset, r.data = binary.BigEndian.Uint64(p), p[8:]
		case chunkOffsetHole:
			r.offset = binary.BigEndian.Uint64(p)
			r.data = make([]byte, binary.BigEndian.Uint32(p[8:]))
		case chunkBlockStatus:
			r.context = binary.BigEndian.Uint32(p)
			for q := p[4:]; len(q) >= 8; q = q[8:] {
				r.desc = append(r.desc, [2]uint32{binary.BigEndian.Uint32(q), binary.BigEndian.Uint32(q[4:])})
			}
		case chunkError, chunkErrorOffset:
			r.errno = binary.BigEndian.Uint32(p)
			r.msg = string(p[6 : 6+binary.BigEndian.Uint16(p[4:])])
		}
		if r.flags&doneFlg != 0 {
			c.mu.Lock()
			delete(c.reads, r.handle)
			c.mu.Unlock()
		}
		return r, nil
	}
	return r, errors.New("bad reply magic")
}

// do sends one request and returns its reply, failing on anything else.
func (c *client) do(typ, flags uint16, off uint64, length uint32, payload []byte) reply {
	c.t.Helper()
	h := c.send(typ, flags, off, length, payload)
	r, err := c.next()
	if err != nil {
		c.t.Fatalf("%d request at %d: %v", typ, off, err)
	}
	if r.handle != h {
		c.t.Fatalf("reply for handle %d, want %d", r.handle, h)
	}
	if r.structured && r.flags&doneFlg == 0 {
		c.t.Fatalf("chunk %d without DONE: the server sends one chunk per reply", r.chunk)
	}
	if c.structured && typ == cmdRead && !r.structured {
		c.t.Fatal("simple reply to a READ after structured replies were negotiated")
	}
	return r
}

// expectErr checks an error reply.
func expectErr(t testing.TB, r reply, want uint32, what string) {
	t.Helper()
	if r.errno != want {
		t.Fatalf("%s: errno %d (%q), want %d", what, r.errno, r.msg, want)
	}
}

// read reads and checks it succeeded.
func (c *client) read(off uint64, n uint32) []byte {
	c.t.Helper()
	r := c.do(cmdRead, 0, off, n, nil)
	if r.errno != 0 {
		c.t.Fatalf("read %d@%d: errno %d %q", n, off, r.errno, r.msg)
	}
	if r.structured && (r.chunk != chunkOffsetData || r.offset != off) {
		c.t.Fatalf("read %d@%d: chunk %d at %d", n, off, r.chunk, r.offset)
	}
	if len(r.data) != int(n) {
		c.t.Fatalf("read %d@%d: got %d bytes", n, off, len(r.data))
	}
	return r.data
}

func (c *client) mustOK(typ, flags uint16, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	if r := c.do(typ, flags, off, length, payload); r.errno != 0 {
		c.t.Fatalf("command %d %d@%d: errno %d %q", typ, length, off, r.errno, r.msg)
	}
}

// closed reports whether the server closed the connection; then it closes
// its end too, as a real client does (a drained server waits for that).
func (c *client) closed() bool {
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.br.ReadByte()
	if err != nil {
		c.nc.Close()
	}
	return err != nil
}

func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }
