package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

const (
	phaseHandshake = iota
	phaseTransmission
)

// conn is one client connection.
type conn struct {
	srv   *Server
	ctx   context.Context // done: stop as for Shutdown
	nc    net.Conn
	br    *bufio.Reader
	bw    *bufio.Writer // handshake only
	log   *slog.Logger
	phase atomic.Int32
	// refused, when set, is why this connection is not served (over
	// MaxConnections): every option is answered with it as an error.
	refused string

	// Negotiated in the handshake.
	noZeroes       bool
	structured     bool
	metaExport     *export // export of the last NBD_OPT_SET_META_CONTEXT
	metaAllocation bool    // ... and whether it selected base:allocation

	// The session, fixed when transmission begins.
	attached   *export // e.attach(c) succeeded: detach when done
	exp        *export
	size       int64
	flags      uint16
	strict     bool // the client asked for block sizes: enforce alignment
	allocation bool // BLOCK_STATUS allowed

	wmu sync.Mutex // serializes writes to the socket
	// Small replies queued for a group write (see send).
	pmu      sync.Mutex
	pending  []byte
	spare    []byte
	flushing bool
	broken   atomic.Bool
	work     chan request
	small    atomic.Int32 // small requests handed to workers, not yet answered (see send)
	budget   *budget      // payload bytes held, at most MaxInFlightBytes
}

// request is one transmission request, decoded and checked.
type request struct {
	protocol.TransmissionRequestHeader
	buf   *[]byte // WRITE payload at [bufHeadroom:], from the pool
	cost  int64   // bytes taken from the connection's budget
	errno uint32  // nonzero: answer with this error, do not run
	msg   string  // why, for the error chunk and the log
}

func newConn(ctx context.Context, s *Server, nc net.Conn) *conn {
	return &conn{srv: s, ctx: ctx, nc: nc, br: bufio.NewReaderSize(nc, 128<<10),
		budget: newBudget(s, s.MaxInFlightBytes), log: s.logger().With("remote", peerName(nc))}
}

// stopping reports whether Shutdown began, Serve's context is done or the
// export is being removed.
func (c *conn) stopping() bool {
	return c.srv.closing.Load() || c.ctx.Err() != nil || c.exportRemoved()
}

func (c *conn) exportRemoved() bool { return c.exp != nil && c.exp.removed.Load() }

// interrupt makes the connection stop for Shutdown: one in the handshake
// is closed, one in transmission stops reading requests and drains. It is
// called after stopping() turned true.
func (c *conn) interrupt() {
	if c.phase.Load() == phaseHandshake {
		c.nc.Close()
		return
	}
	c.drain()
}

// drain makes a connection in transmission stop reading requests and
// answer the ones received; serve then closes it. For RemoveExport, which
// calls it after the export is marked removed: a connection still in the
// handshake finishes its option replies, and serve closes it when it sees
// the removal as transmission begins.
func (c *conn) drain() {
	if c.phase.Load() == phaseHandshake {
		return
	}
	c.budget.stopAll()
	c.nc.SetReadDeadline(time.Now())
}

func (c *conn) serve() {
	defer func() {
		c.nc.Close()
		if c.attached != nil {
			c.attached.detach(c)
		}
	}()
	if t := c.srv.HandshakeTimeout; c.refused != "" && (t <= 0 || t > refuseTimeout) {
		c.nc.SetDeadline(time.Now().Add(refuseTimeout))
	} else if t > 0 {
		c.nc.SetDeadline(time.Now().Add(t))
	}
	c.bw = bufio.NewWriterSize(c.nc, 4<<10)
	if err := c.handshake(); err != nil {
		switch {
		case errors.Is(err, errProtocol):
			c.log.Warn("nbd: closing connection after a protocol violation in the handshake", "err", err)
		case errors.Is(err, errUnknownExport):
			c.log.Info("nbd: closing connection", "err", err)
		case c.refused != "":
			c.log.Debug("nbd: refused connection closed", "err", err)
		case errors.Is(err, errAbort), errors.Is(err, io.EOF), c.stopping():
			c.log.Debug("nbd: handshake ended", "err", err)
		default:
			c.log.Info("nbd: handshake failed", "err", err)
		}
		return
	}
	c.bw = nil
	c.phase.Store(phaseTransmission)
	c.nc.SetDeadline(time.Time{})
	if c.stopping() {
		return // Shutdown or RemoveExport began during the handshake
	}
	c.log = c.log.With("export", c.exp.Name)
	c.log.Debug("nbd: transmission started", "size", c.size, "structured", c.structured, "block_status", c.allocation)
	if c.transmit() {
		c.closeDrained()
	}
}

// lingerTimeout bounds how long a drained connection waits for its client
// to close after the server's end-of-file.
const lingerTimeout = 2 * time.Second

// closeWriter is a connection that can send end-of-file and still read
// (*net.TCPConn, *net.UnixConn).
type closeWriter interface{ CloseWrite() error }

// closeDrained ends a drained connection without losing its last replies.
// Closing a socket with requests still unread makes the kernel send a
// reset instead of end-of-file, and the client's kernel drops the replies
// its application has not read yet when the reset arrives. So it
// half-closes (end-of-file after the last reply) and discards what the
// client still sends until the client closes or lingerTimeout passes.
func (c *conn) closeDrained() {
	cw, ok := c.nc.(closeWriter)
	if !ok || c.broken.Load() || cw.CloseWrite() != nil {
		return
	}
	c.nc.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.Copy(io.Discard, c.nc)
}

// transmit reads requests and hands them to the workers until the client
// disconnects, violates the protocol or the server shuts down or removes
// the export; then it answers what was received and returns. drained
// reports the last: the server stopped reading.
func (c *conn) transmit() (drained bool) {
	c.work = make(chan request)
	var wg sync.WaitGroup
	for range c.srv.MaxInFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := worker{c: c, scratch: make([]byte, scratchSize)}
			for r := range c.work {
				w.handle(&r)
			}
		}()
	}
	err := c.readRequests()
	switch {
	case err == nil:
		c.log.Debug("nbd: client disconnected (NBD_CMD_DISC)")
	case errors.Is(err, errProtocol):
		c.log.Warn("nbd: closing connection after a protocol violation", "err", err)
		c.nc.Close()
	case (errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, errStopped)) && c.exportRemoved():
		c.log.Debug("nbd: export removed; answering requests in flight, then closing")
		drained = true
	case (errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, errStopped)) && c.stopping():
		c.log.Debug("nbd: server shutting down; answering requests in flight")
		drained = true
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), c.broken.Load():
		c.log.Debug("nbd: connection closed", "err", err)
	default:
		c.log.Info("nbd: connection failed", "err", err)
	}
	close(c.work)
	wg.Wait()
	return drained
}

func (c *conn) readRequests() error {
	var hdr [requestHeaderSize]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return err
		}
		r, err := decodeRequest(hdr[:])
		if err != nil {
			return err
		}
		if r.Type == cmdDisc {
			return nil
		}
		r.errno, r.msg = c.check(&r.TransmissionRequestHeader)
		if r.errno == 0 && (r.Type == cmdRead || r.Type == cmdWrite) {
			// Wait here, before reading the payload, while the bytes do
			// not fit: the client's requests back up in the socket.
			r.cost = bufCost(r.Length)
			if !c.budget.acquire(r.cost) {
				return errStopped
			}
		}
		if r.Type == cmdWrite {
			if err := c.readPayload(&r); err != nil {
				return err
			}
		}
		if small(&r) {
			c.small.Add(1) // the worker subtracts it when r is answered
		}
		c.work <- r
	}
}

// decodeRequest decodes a request header; a bad magic is a protocol
// violation.
func decodeRequest(b []byte) (request, error) {
	var r request
	if len(b) < requestHeaderSize {
		return r, fmt.Errorf("%w: request header of %d bytes", errProtocol, len(b))
	}
	r.RequestMagic = binary.BigEndian.Uint32(b[0:])
	if r.RequestMagic != magicRequest {
		return r, fmt.Errorf("%w: bad request magic %#08x", errProtocol, r.RequestMagic)
	}
	r.CommandFlags = binary.BigEndian.Uint16(b[4:])
	r.Type = binary.BigEndian.Uint16(b[6:])
	r.Handle = binary.BigEndian.Uint64(b[8:])
	r.Offset = binary.BigEndian.Uint64(b[16:])
	r.Length = binary.BigEndian.Uint32(b[24:])
	return r, nil
}

// readPayload reads a WRITE payload into a pooled buffer, or skips it when
// the request is refused anyway. A payload too large to skip closes the
// connection.
func (c *conn) readPayload(r *request) error {
	if r.errno != 0 {
		if r.Length > maxDiscard {
			return fmt.Errorf("%w: WRITE of %d bytes (limit %d) at offset %d", errProtocol, r.Length, MaxPayload, r.Offset)
		}
		_, err := io.CopyN(io.Discard, c.br, int64(r.Length))
		return err
	}
	r.buf = getBuf(int(r.Length))
	if _, err := io.ReadFull(c.br, (*r.buf)[bufHeadroom:]); err != nil {
		c.done(r)
		return err
	}
	return nil
}

// done returns a request's buffer to the pool and its bytes to the
// budget.
func (c *conn) done(r *request) {
	if r.buf != nil {
		putBuf(r.buf)
		r.buf = nil
	}
	c.budget.release(r.cost)
	r.cost = 0
}

// allowedFlags are the command flags valid for a command in this session.
func (c *conn) allowedFlags(typ uint16) uint16 {
	var f uint16
	if c.flags&tflagSendFUA != 0 {
		f |= cmdFlagFUA // valid on every command once negotiated
	}
	switch typ {
	case cmdRead:
		if c.structured {
			f |= cmdFlagDF
		}
	case cmdWriteZeroes:
		f |= cmdFlagNoHole
	case cmdBlockStatus:
		f |= cmdFlagReqOne
	}
	return f
}

// check validates a request against the session; it returns the NBD error
// to answer with, or 0 to run it.
func (c *conn) check(h *protocol.TransmissionRequestHeader) (uint32, string) {
	switch h.Type {
	case cmdRead, cmdWrite, cmdFlush, cmdTrim, cmdWriteZeroes, cmdBlockStatus:
	default:
		return errInval, fmt.Sprintf("unknown command %d", h.Type)
	}
	name := cmdName(h.Type)
	if bad := h.CommandFlags &^ c.allowedFlags(h.Type); bad != 0 {
		return errInval, fmt.Sprintf("flags %#x are not valid for %s", bad, name)
	}
	write := h.Type == cmdWrite || h.Type == cmdTrim || h.Type == cmdWriteZeroes
	if write && c.exp.ReadOnly {
		return errPerm, fmt.Sprintf("%s on a read-only export", name)
	}
	if h.Type == cmdFlush {
		if h.Offset != 0 || h.Length != 0 {
			return errInval, "FLUSH with a nonzero offset or length"
		}
		return 0, ""
	}
	if h.Type == cmdBlockStatus && !c.allocation {
		return errInval, "BLOCK_STATUS without base:allocation selected by NBD_OPT_SET_META_CONTEXT"
	}
	if (h.Type == cmdRead || h.Type == cmdWrite) && h.Length > MaxPayload {
		return errInval, fmt.Sprintf("%s of %d bytes is larger than the maximum %d", name, h.Length, MaxPayload)
	}
	if h.Length == 0 {
		return errInval, name + " of zero bytes"
	}
	if size := uint64(c.size); h.Offset > size || uint64(h.Length) > size-h.Offset {
		e := errInval
		if h.Type == cmdWrite || h.Type == cmdWriteZeroes {
			e = errNoSpc // the spec's choice for writes past the end
		}
		return e, fmt.Sprintf("%s of [%d, %d) is beyond the end of the export (%d bytes)",
			name, h.Offset, h.Offset+uint64(h.Length), size)
	}
	if c.strict && (h.Offset|uint64(h.Length))%MinBlockSize != 0 {
		return errInval, fmt.Sprintf("%s of %d bytes at %d is not aligned to %d bytes", name, h.Length, h.Offset, MinBlockSize)
	}
	return 0, ""
}
