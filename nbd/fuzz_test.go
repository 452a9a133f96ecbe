package nbd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"testing"
)

// sizeBackend is a Backend of a given size that holds nothing.
type sizeBackend int64

func (s sizeBackend) ReadAt(p []byte, off int64) (int, error)  { clear(p); return len(p), nil }
func (s sizeBackend) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (s sizeBackend) WriteZeroes(off, n int64) error           { return nil }
func (s sizeBackend) Trim(off, n int64) error                  { return nil }
func (s sizeBackend) Flush() error                             { return nil }
func (s sizeBackend) Size() int64                              { return int64(s) }

func fuzzServer(t testing.TB) *Server {
	s := NewServer()
	s.Logger = slog.New(slog.DiscardHandler)
	s.Exports = []Export{{Name: "disk", Backend: sizeBackend(1 << 20)}, {Name: "ro", Backend: sizeBackend(4096), ReadOnly: true}}
	s.DefaultExport = "disk"
	if err := s.init(); err != nil {
		t.Fatal(err)
	}
	return s
}

func option(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// FuzzOptions feeds arbitrary client bytes to the handshake: client flags
// and options. It must end with an error or a session, never panic, and
// a session must name an export and only allow block status when
// structured replies were negotiated. The same bytes on a connection
// refused for the connection cap never reach a session.
func FuzzOptions(f *testing.F) {
	flags := []byte{0, 0, 0, 3}
	info := binary.BigEndian.AppendUint32(nil, 4)
	info = append(info, "disk"...)
	info = append(info, 0, 2, 0, byte(infoBlockSize), 0, byte(infoName))
	meta := binary.BigEndian.AppendUint32(nil, 0)
	meta = binary.BigEndian.AppendUint32(meta, 2)
	meta = binary.BigEndian.AppendUint32(meta, 15)
	meta = append(meta, contextBaseAllocation...)
	meta = binary.BigEndian.AppendUint32(meta, 5)
	meta = append(meta, "base:"...)
	seeds := [][]byte{
		append(flags, option(optGo, info)...),
		append(flags, option(optExportName, []byte("ro"))...),
		append(append(append(append(flags, option(optList, nil)...), option(optStructuredReply, nil)...),
			option(optSetMetaContext, meta)...), option(optGo, info)...),
		append(append(flags, option(optListMetaContext, meta)...), option(optInfo, info)...),
		append(append(flags, option(99, []byte("x"))...), option(optAbort, nil)...),
		append(flags, option(optGo, []byte{0, 0, 0, 0, 0, 0})...),
		{0, 0, 0, 1, 0, 0},
	}
	for _, s := range seeds {
		f.Add(s)
	}
	srv := fuzzServer(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		refused := &conn{srv: srv, br: bufio.NewReader(bytes.NewReader(in)), bw: bufio.NewWriter(io.Discard), log: srv.logger(),
			refused: "over the cap"}
		if err := refused.handshake(); err == nil || refused.exp != nil {
			t.Fatalf("refused connection entered transmission (err %v)", err)
		}
		c := &conn{srv: srv, br: bufio.NewReader(bytes.NewReader(in)), bw: bufio.NewWriter(io.Discard), log: srv.logger()}
		err := c.handshake()
		if c.attached != nil {
			defer c.attached.detach(c) // as serve does
		}
		if c.attached != c.exp {
			t.Fatalf("handshake (err %v) attached to a different export than its session's", err)
		}
		if err != nil {
			if c.exp != nil {
				t.Fatalf("handshake failed (%v) but chose export %q", err, c.exp.Name)
			}
			return
		}
		if c.exp == nil || c.size != c.exp.Backend.Size() || c.flags&tflagHasFlags == 0 {
			t.Fatalf("session without an export: %+v", c)
		}
		if c.allocation && !c.structured {
			t.Fatal("block status allowed without structured replies")
		}
		if c.exp.ReadOnly != (c.flags&tflagReadOnly != 0) {
			t.Fatalf("flags %#x for export %q", c.flags, c.exp.Name)
		}
	})
}

// FuzzOptionData round-trips the GO/INFO and meta-context parsers: what
// parses must re-encode to the same bytes.
func FuzzOptionData(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 'a', 0, 1, 0, 3})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, 'b', 'a', 's', 'e', ':'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		if r, err := parseInfoRequest(in); err == nil {
			n := binary.BigEndian.Uint16(in[4+len(r.name):])
			if len(in) != 4+len(r.name)+2+2*int(n) || string(in[4:4+len(r.name)]) != r.name {
				t.Fatalf("info request %+v from %x", r, in)
			}
		}
		if r, err := parseMetaContextRequest(in); err == nil {
			b := binary.BigEndian.AppendUint32(nil, uint32(len(r.name)))
			b = append(b, r.name...)
			b = binary.BigEndian.AppendUint32(b, uint32(len(r.queries)))
			for _, q := range r.queries {
				b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
				b = append(b, q...)
			}
			if !bytes.Equal(b, in) {
				t.Fatalf("meta context request %+v re-encodes to %x, not %x", r, b, in)
			}
		}
	})
}

// FuzzRequestHeader decodes arbitrary request headers and checks them
// against sessions: only a bad magic is fatal, and a request that passes
// the checks lies inside the export and within the payload limit.
func FuzzRequestHeader(f *testing.F) {
	hdr := func(flags, typ uint16, off uint64, n uint32) []byte {
		b := binary.BigEndian.AppendUint32(nil, magicRequest)
		b = binary.BigEndian.AppendUint16(b, flags)
		b = binary.BigEndian.AppendUint16(b, typ)
		b = binary.BigEndian.AppendUint64(b, 7)
		b = binary.BigEndian.AppendUint64(b, off)
		return binary.BigEndian.AppendUint32(b, n)
	}
	f.Add(hdr(0, cmdRead, 0, 4096), byte(0))
	f.Add(hdr(cmdFlagFUA, cmdWrite, 1<<20-512, 512), byte(1))
	f.Add(hdr(cmdFlagNoHole, cmdWriteZeroes, 4096, 1<<30), byte(2))
	f.Add(hdr(cmdFlagReqOne, cmdBlockStatus, 0, 1), byte(7))
	f.Add(hdr(0, cmdFlush, 0, 0), byte(3))
	f.Add([]byte("NBDMAGICIHAVEOPTxxxxxxxxxxxxxxxx"), byte(0))
	srv := fuzzServer(f)
	f.Fuzz(func(t *testing.T, in []byte, mode byte) {
		r, err := decodeRequest(in)
		if err != nil {
			if !errors.Is(err, errProtocol) {
				t.Fatalf("decode error %v is not a protocol violation", err)
			}
			if len(in) >= requestHeaderSize && binary.BigEndian.Uint32(in) == magicRequest {
				t.Fatal("good magic refused")
			}
			return
		}
		c := &conn{srv: srv, structured: mode&1 != 0, strict: mode&2 != 0}
		list := srv.exports().list
		c.metaAllocation, c.metaExport = mode&4 != 0 && c.structured, list[0]
		c.enter(list[int(mode>>3)%2], c.strict)
		errno, msg := c.check(&r.TransmissionRequestHeader)
		if errno != 0 {
			if msg == "" {
				t.Fatal("refusal without a reason")
			}
			return
		}
		h := r.TransmissionRequestHeader
		if h.Type == cmdFlush {
			return
		}
		if h.Length == 0 || h.Offset+uint64(h.Length) > uint64(c.size) || h.Offset+uint64(h.Length) < h.Offset {
			t.Fatalf("accepted %s of %d bytes at %d on an export of %d", cmdName(h.Type), h.Length, h.Offset, c.size)
		}
		if (h.Type == cmdRead || h.Type == cmdWrite) && h.Length > MaxPayload {
			t.Fatalf("accepted a %d-byte %s", h.Length, cmdName(h.Type))
		}
		if c.exp.ReadOnly && h.Type != cmdRead && h.Type != cmdBlockStatus {
			t.Fatalf("accepted %s on a read-only export", cmdName(h.Type))
		}
		if c.strict && (h.Offset|uint64(h.Length))%MinBlockSize != 0 {
			t.Fatal("accepted an unaligned request from a strict client")
		}
	})
}
