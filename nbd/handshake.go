package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Handshake limits: option haggling is small; anything beyond these is
// treated as abuse and closes the connection.
const (
	maxOptionLen = 64 << 10
	minOptions   = 1024 // options per connection, at least; more with many exports
)

var (
	// errProtocol marks a violation of the protocol by the client; the
	// connection is closed with a log line.
	errProtocol = errors.New("protocol violation")
	// errAbort is a client ending the handshake with NBD_OPT_ABORT.
	errAbort = errors.New("client aborted the handshake")
	// errUnknownExport ends a handshake after NBD_OPT_EXPORT_NAME named an
	// export that does not exist: that option cannot return an error.
	errUnknownExport = errors.New("unknown export")
	// errRefused ends the handshake of a refused connection whose client
	// sent NBD_OPT_EXPORT_NAME, which cannot be answered with an error.
	errRefused = errors.New("connection refused")
)

// handshake runs the fixed newstyle handshake and the option haggling on
// c.br and c.bw. On success the session fields of c are set and the
// transmission phase follows.
func (c *conn) handshake() error {
	var b [18]byte
	binary.BigEndian.PutUint64(b[0:], magicNBD)
	binary.BigEndian.PutUint64(b[8:], magicOption)
	binary.BigEndian.PutUint16(b[16:], flagFixedNewstyle|flagNoZeroes)
	c.bw.Write(b[:])
	if err := c.bw.Flush(); err != nil {
		return err
	}
	if _, err := io.ReadFull(c.br, b[:4]); err != nil {
		return err
	}
	cflags := binary.BigEndian.Uint32(b[:4])
	if cflags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return fmt.Errorf("%w: unknown client flags %#x", errProtocol, cflags)
	}
	// A client without NBD_FLAG_C_FIXED_NEWSTYLE is served as if it had
	// set it (the spec allows this); such clients only send EXPORT_NAME.
	c.noZeroes = cflags&flagCNoZeroes != 0
	return c.options()
}

// options reads options until one enters the transmission phase.
func (c *conn) options() error {
	var hdr [16]byte
	var data []byte
	limit := max(minOptions, 8*len(c.srv.exports().list))
	for n := 0; ; n++ {
		if n == limit {
			return fmt.Errorf("%w: more than %d options", errProtocol, limit)
		}
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return err
		}
		if m := binary.BigEndian.Uint64(hdr[0:]); m != magicOption {
			return fmt.Errorf("%w: bad option magic %#x", errProtocol, m)
		}
		opt, length := binary.BigEndian.Uint32(hdr[8:]), binary.BigEndian.Uint32(hdr[12:])
		if length > maxOptionLen {
			return fmt.Errorf("%w: option %d with %d bytes of data (limit %d)", errProtocol, opt, length, maxOptionLen)
		}
		if cap(data) < int(length) {
			data = make([]byte, length)
		}
		data = data[:length]
		if _, err := io.ReadFull(c.br, data); err != nil {
			return err
		}
		done, err := c.option(opt, data)
		if ferr := c.bw.Flush(); err == nil {
			err = ferr
		}
		if err != nil || done {
			return err
		}
	}
}

// option answers one option; done reports that transmission begins.
func (c *conn) option(opt uint32, data []byte) (done bool, err error) {
	if c.refused != "" {
		return false, c.refuse(opt)
	}
	switch opt {
	case optExportName:
		e := c.srv.lookup(string(data))
		if e == nil || !c.attach(e) {
			return false, fmt.Errorf("%w %q requested with NBD_OPT_EXPORT_NAME", errUnknownExport, data)
		}
		c.enter(e, false)
		var b [10 + 124]byte
		binary.BigEndian.PutUint64(b[0:], uint64(c.size))
		binary.BigEndian.PutUint16(b[8:], c.flags)
		if c.noZeroes {
			c.bw.Write(b[:10])
		} else {
			c.bw.Write(b[:])
		}
		return true, nil
	case optAbort:
		c.optReply(opt, repAck)
		c.bw.Flush()
		return false, errAbort
	case optList:
		if len(data) != 0 {
			c.optError(opt, repErrInvalid, "NBD_OPT_LIST takes no data")
			return false, nil
		}
		for _, e := range c.srv.exports().list {
			var n [4]byte
			binary.BigEndian.PutUint32(n[:], uint32(len(e.Name)))
			c.optReply(opt, repServer, n[:], []byte(e.Name), []byte(e.Description))
		}
		c.optReply(opt, repAck)
		return false, nil
	case optInfo, optGo:
		return c.optInfoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			c.optError(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
			return false, nil
		}
		c.structured = true
		c.optReply(opt, repAck)
		return false, nil
	case optListMetaContext, optSetMetaContext:
		c.optMetaContext(opt, data)
		return false, nil
	}
	c.optError(opt, repErrUnsup, fmt.Sprintf("option %d is not supported by this server", opt))
	return false, nil
}

// refuse answers an option of a refused connection: NBD_REP_ERR_POLICY
// with the reason, which clients show to the user (nbdinfo: "server
// replied with error to opt_go request"). NBD_OPT_GO never succeeds.
func (c *conn) refuse(opt uint32) error {
	switch opt {
	case optAbort:
		c.optReply(opt, repAck)
		return errAbort
	case optExportName:
		return fmt.Errorf("%w: %s", errRefused, c.refused)
	}
	c.optError(opt, repErrPolicy, c.refused)
	return nil
}

// optInfoGo answers NBD_OPT_INFO and NBD_OPT_GO.
func (c *conn) optInfoGo(opt uint32, data []byte) (bool, error) {
	req, err := parseInfoRequest(data)
	if err != nil {
		c.optError(opt, repErrInvalid, err.Error())
		return false, nil
	}
	e := c.srv.lookup(req.name)
	if e == nil || (opt == optGo && !c.attach(e)) {
		c.optError(opt, repErrUnknown, c.unknownExportMessage(req.name))
		return false, nil
	}
	flags := c.transmissionFlags(e)
	var b [14]byte
	binary.BigEndian.PutUint16(b[0:], infoExport)
	binary.BigEndian.PutUint64(b[2:], uint64(e.Backend.Size()))
	binary.BigEndian.PutUint16(b[10:], flags)
	c.optReply(opt, repInfo, b[:12])
	if req.name != e.Name || req.wantName {
		binary.BigEndian.PutUint16(b[0:], infoName)
		c.optReply(opt, repInfo, b[:2], []byte(e.Name))
	}
	if req.wantDescription && e.Description != "" {
		binary.BigEndian.PutUint16(b[0:], infoDescription)
		c.optReply(opt, repInfo, b[:2], []byte(e.Description))
	}
	// Block sizes are sent even when not requested (clients ignore
	// information they did not ask for); they are enforced only for a
	// client that asked for them with NBD_OPT_GO.
	binary.BigEndian.PutUint16(b[0:], infoBlockSize)
	binary.BigEndian.PutUint32(b[2:], MinBlockSize)
	binary.BigEndian.PutUint32(b[6:], PreferredBlockSize)
	binary.BigEndian.PutUint32(b[10:], MaxPayload)
	c.optReply(opt, repInfo, b[:14])
	c.optReply(opt, repAck)
	if opt == optGo {
		c.enter(e, req.wantBlockSize)
		return true, nil
	}
	return false, nil
}

// optMetaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT; the only context is base:allocation.
func (c *conn) optMetaContext(opt uint32, data []byte) {
	set := opt == optSetMetaContext
	if set {
		// A SET replaces the selection even when it fails.
		c.metaExport, c.metaAllocation = nil, false
		if !c.structured {
			c.optError(opt, repErrInvalid, "NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first")
			return
		}
	}
	req, err := parseMetaContextRequest(data)
	if err != nil {
		c.optError(opt, repErrInvalid, err.Error())
		return
	}
	e := c.srv.lookup(req.name)
	if e == nil {
		c.optError(opt, repErrUnknown, c.unknownExportMessage(req.name))
		return
	}
	if matchAllocation(req.queries, !set) {
		var id [4]byte
		if set {
			binary.BigEndian.PutUint32(id[:], contextIDAllocation)
			c.metaExport, c.metaAllocation = e, true
		}
		c.optReply(opt, repMetaContext, id[:], []byte(contextBaseAllocation))
	}
	c.optReply(opt, repAck)
}

func (c *conn) unknownExportMessage(name string) string {
	if name == "" {
		return "there is no default export; name one of the exports (list them with nbdinfo --list)"
	}
	return fmt.Sprintf("no export named %q; list the exports with nbdinfo --list", name)
}

// attach records that c opens e, so that RemoveExport finds and drains c;
// it fails when e is being removed. serve detaches c when it ends.
func (c *conn) attach(e *export) bool {
	if !e.attach(c) {
		return false
	}
	c.attached = e
	return true
}

// enter fixes the session for the transmission phase.
func (c *conn) enter(e *export, strict bool) {
	c.exp = e
	c.size = e.Backend.Size()
	c.strict = strict
	c.allocation = c.metaAllocation && c.metaExport == e
	c.flags = c.transmissionFlags(e)
}

func (c *conn) transmissionFlags(e *export) uint16 {
	f := tflagHasFlags | tflagSendFlush | tflagCanMultiConn
	if e.ReadOnly {
		f |= tflagReadOnly
	} else {
		f |= tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes
	}
	if c.structured {
		f |= tflagSendDF // every read is answered with one data chunk
	}
	return f
}

// optReply writes one option reply; write errors surface at Flush.
func (c *conn) optReply(opt, typ uint32, data ...[]byte) {
	n := 0
	for _, d := range data {
		n += len(d)
	}
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], magicOptReply)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(n))
	c.bw.Write(h[:])
	for _, d := range data {
		c.bw.Write(d)
	}
}

// optError writes an error reply with a message for the user.
func (c *conn) optError(opt, typ uint32, msg string) {
	if len(msg) > maxNameLen {
		msg = msg[:maxNameLen]
	}
	c.log.Debug("nbd: option refused", "option", opt, "reply", typ&^(1<<31), "reason", msg)
	c.optReply(opt, typ, []byte(msg))
}
