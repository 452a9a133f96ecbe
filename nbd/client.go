package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// Errors of the client.
var (
	// ErrUnsupported is returned for a command the export did not
	// advertise (TRIM, WRITE_ZEROES, FLUSH) or a write to a read-only
	// export; nothing is sent.
	ErrUnsupported = errors.New("nbd: the export does not support this command")
	// ErrClientClosed is returned after Close, or after a transport or
	// protocol error broke the connection.
	ErrClientClosed = errors.New("nbd: client connection closed")
)

// ReplyError is an error the server answered a request with. Errno is the
// NBD error value (the Linux errno: 1 EPERM, 5 EIO, 22 EINVAL, 28 ENOSPC,
// 108 ESHUTDOWN); the connection stays usable.
type ReplyError struct {
	Command string
	Offset  int64
	Length  int64
	Errno   uint32
}

func (e *ReplyError) Error() string {
	return fmt.Sprintf("nbd: %s of %d bytes at %d: server replied error %d (%v)", e.Command, e.Length, e.Offset, e.Errno,
		syscall.Errno(e.Errno))
}

// Client is a minimal NBD client: the fixed newstyle handshake with
// NBD_OPT_GO, then simple replies, one request at a time (methods are safe
// for concurrent use and are serialised). It needs no kernel module and
// no libnbd: `lifeboat demo` writes its workload with it. READ and WRITE
// longer than the server's maximum payload are split.
type Client struct {
	// Timeout bounds each request; 0 means none. Set it before the first
	// request.
	Timeout time.Duration

	mu     sync.Mutex
	nc     net.Conn
	br     *bufio.Reader
	hdr    [requestHeaderSize]byte
	handle uint64
	size   int64
	flags  uint16
	maxLen int64
	broken error // set once the connection is unusable
}

// Dial connects to addr (host:port) and opens export name.
func Dial(ctx context.Context, addr, name string) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", addr, err)
	}
	c, err := NewClient(ctx, nc, name)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// NewClient runs the handshake on nc and opens export name. On error the
// caller still owns nc.
func NewClient(ctx context.Context, nc net.Conn, name string) (*Client, error) {
	c := &Client{nc: nc, br: bufio.NewReaderSize(nc, 64<<10), maxLen: MaxPayload}
	// The handshake is bounded by DefaultHandshakeTimeout, and cut short
	// when ctx ends.
	nc.SetDeadline(time.Now().Add(DefaultHandshakeTimeout))
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
	err := c.handshake(name)
	if !stop() { // ctx ended: its error explains the failure best
		err = ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("nbd: open export %q: %w", name, err)
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

func (c *Client) handshake(name string) error {
	var g [18]byte
	if _, err := io.ReadFull(c.br, g[:]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	hflags := binary.BigEndian.Uint16(g[16:])
	if binary.BigEndian.Uint64(g[0:]) != magicNBD || binary.BigEndian.Uint64(g[8:]) != magicOption ||
		hflags&flagFixedNewstyle == 0 {
		return errors.New("not a fixed newstyle NBD server")
	}
	cflags := flagCFixedNewstyle
	if hflags&flagNoZeroes != 0 {
		cflags |= flagCNoZeroes
	}
	// Client flags, then NBD_OPT_GO with the name and no info requests.
	b := binary.BigEndian.AppendUint32(nil, cflags)
	b = binary.BigEndian.AppendUint64(b, magicOption)
	b = binary.BigEndian.AppendUint32(b, optGo)
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(name)+2))
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, 0)
	if _, err := c.nc.Write(b); err != nil {
		return err
	}
	gotSize := false
	for {
		var h [20]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return fmt.Errorf("read option reply: %w", err)
		}
		if binary.BigEndian.Uint64(h[0:]) != magicOptReply || binary.BigEndian.Uint32(h[8:]) != optGo {
			return errors.New("bad option reply")
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		if n > maxOptionLen {
			return fmt.Errorf("option reply of %d bytes", n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return err
		}
		switch {
		case typ == repAck:
			if !gotSize {
				return errors.New("server sent no NBD_INFO_EXPORT")
			}
			return nil
		case typ&(1<<31) != 0:
			return fmt.Errorf("server refused (reply %#x): %s", typ, data)
		case typ == repInfo && len(data) >= 2:
			switch binary.BigEndian.Uint16(data) {
			case infoExport:
				if len(data) != 12 {
					return errors.New("short NBD_INFO_EXPORT")
				}
				c.size = int64(binary.BigEndian.Uint64(data[2:]))
				c.flags = binary.BigEndian.Uint16(data[10:])
				gotSize = true
			case infoBlockSize:
				if len(data) == 14 {
					if m := int64(binary.BigEndian.Uint32(data[10:])); m > 0 {
						c.maxLen = min(m, MaxPayload)
					}
				}
			}
		}
	}
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

// ReadOnly reports whether the server serves the export read-only.
func (c *Client) ReadOnly() bool { return c.flags&tflagReadOnly != 0 }

// CanTrim reports whether the server advertised TRIM.
func (c *Client) CanTrim() bool { return c.flags&tflagSendTrim != 0 }

// CanZero reports whether the server advertised WRITE_ZEROES.
func (c *Client) CanZero() bool { return c.flags&tflagSendWriteZeroes != 0 }

// CanFlush reports whether the server advertised FLUSH.
func (c *Client) CanFlush() bool { return c.flags&tflagSendFlush != 0 }

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	return c.chunked(cmdRead, p, off)
}

// WriteAt writes p at off; Flush makes it durable.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	if c.ReadOnly() {
		return 0, ErrUnsupported
	}
	return c.chunked(cmdWrite, p, off)
}

// Flush makes every completed write durable.
func (c *Client) Flush() error { return c.simple(cmdFlush, c.CanFlush(), 0, 0) }

// Trim discards [off, off+n): it reads as zeros afterwards on this server.
func (c *Client) Trim(off, n int64) error { return c.simple(cmdTrim, c.CanTrim(), off, n) }

// WriteZeroes makes [off, off+n) read as zeros.
func (c *Client) WriteZeroes(off, n int64) error {
	return c.simple(cmdWriteZeroes, c.CanZero(), off, n)
}

// simple sends a request without payload, in pieces of at most 2 GiB.
func (c *Client) simple(cmd uint16, ok bool, off, n int64) error {
	if !ok || (cmd != cmdFlush && c.ReadOnly()) {
		return ErrUnsupported
	}
	for {
		l := min(n, 1<<31)
		if err := c.do(cmd, nil, off, l); err != nil {
			return err
		}
		off, n = off+l, n-l
		if n <= 0 {
			return nil
		}
	}
}

func (c *Client) chunked(cmd uint16, p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		l := min(int64(len(p)-done), c.maxLen)
		if err := c.do(cmd, p[done:done+int(l)], off+int64(done), l); err != nil {
			return done, err
		}
		done += int(l)
	}
	return done, nil
}

// do sends one request and reads its simple reply.
func (c *Client) do(cmd uint16, p []byte, off, n int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return c.broken
	}
	if c.Timeout > 0 {
		c.nc.SetDeadline(time.Now().Add(c.Timeout))
	}
	if err := c.exchange(cmd, p, off, n); err != nil {
		var re *ReplyError
		if !errors.As(err, &re) {
			c.broken = fmt.Errorf("%w: %w", ErrClientClosed, err)
			c.nc.Close()
			return c.broken
		}
		return err
	}
	return nil
}

func (c *Client) exchange(cmd uint16, p []byte, off, n int64) error {
	h := c.header(cmd, off, n)
	bufs := net.Buffers{h}
	if cmd == cmdWrite {
		bufs = append(bufs, p)
	}
	if _, err := bufs.WriteTo(c.nc); err != nil {
		return fmt.Errorf("send %s: %w", cmdName(cmd), err)
	}
	var r [simpleReplySize]byte
	if _, err := io.ReadFull(c.br, r[:]); err != nil {
		return fmt.Errorf("read %s reply: %w", cmdName(cmd), err)
	}
	if m := binary.BigEndian.Uint32(r[0:]); m != magicSimpleReply {
		return fmt.Errorf("reply magic %#x to %s (this client does not negotiate structured replies)", m, cmdName(cmd))
	}
	if got := binary.BigEndian.Uint64(r[8:]); got != c.handle {
		return fmt.Errorf("reply handle %d, want %d", got, c.handle)
	}
	if e := binary.BigEndian.Uint32(r[4:]); e != 0 {
		return &ReplyError{Command: cmdName(cmd), Offset: off, Length: n, Errno: e}
	}
	if cmd == cmdRead {
		if _, err := io.ReadFull(c.br, p); err != nil {
			return fmt.Errorf("read data: %w", err)
		}
	}
	return nil
}

// header fills the request header of the next request.
func (c *Client) header(cmd uint16, off, n int64) []byte {
	c.handle++
	h := c.hdr[:]
	binary.BigEndian.PutUint32(h[0:], magicRequest)
	binary.BigEndian.PutUint16(h[4:], 0) // no command flags
	binary.BigEndian.PutUint16(h[6:], cmd)
	binary.BigEndian.PutUint64(h[8:], c.handle)
	binary.BigEndian.PutUint64(h[16:], uint64(off))
	binary.BigEndian.PutUint32(h[24:], uint32(n))
	return h
}

// Close sends NBD_CMD_DISC and closes the connection. Requests the server
// acknowledged are unaffected; call Flush first to make them durable.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nc == nil {
		return nil
	}
	var err error
	if c.broken == nil {
		c.nc.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.nc.Write(c.header(cmdDisc, 0, 0))
		if cerr := c.nc.Close(); err == nil {
			err = cerr
		}
	}
	c.nc, c.broken = nil, ErrClientClosed
	return err
}
