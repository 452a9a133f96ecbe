package nbd

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// UnixPrefix marks a Unix socket address for Listen: "unix:/run/lifeboat/nbd.sock".
const UnixPrefix = "unix:"

// SocketMode is the mode of a Unix socket made by Listen: its owner and
// group may connect, nobody else.
const SocketMode os.FileMode = 0o660

// maxSocketPath is the longest path a Unix socket can be bound to
// (sun_path holds 108 bytes with the terminating NUL).
const maxSocketPath = 107

// ErrAddress is wrapped by Listen's errors about the address itself (a path
// that is in use or is not a socket); the caller can show them as a usage
// error.
var ErrAddress = errors.New("nbd: unusable address")

// Listen opens a listener for Serve on addr, either HOST:PORT (TCP) or
// unix:PATH (a Unix socket).
//
// TCP: NBD has no authentication, so a listener that is not on a loopback
// address is logged as a warning.
//
// Unix socket: it is created with SocketMode, race-free: bound inside a
// new private (0700) directory beside PATH, chmod-ed there, then linked
// to PATH, so nobody but root can connect before the mode is set. A socket
// left at PATH by a process that died is replaced, only if nothing answers
// on it; a live socket or anything that is not a socket is an error. Close
// removes PATH again (if it is still this socket). Missing parent
// directories of PATH are created with mode 0755.
func Listen(addr string, log *slog.Logger) (net.Listener, error) {
	if log == nil {
		log = slog.Default()
	}
	if path, ok := strings.CutPrefix(addr, UnixPrefix); ok {
		return listenUnix(path, log)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrAddress, addr, err)
	}
	warnExposed(log, ln.Addr())
	return ln, nil
}

// warnExposed logs a warning for a TCP address that is not loopback.
func warnExposed(log *slog.Logger, addr net.Addr) {
	if ta, ok := addr.(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
		log.Warn("nbd: listening on a non-loopback address, and NBD has no authentication: anyone who can reach "+
			"it can read and write the volumes; serve on a unix: socket or 127.0.0.1 instead", "addr", addr.String())
	}
}

func listenUnix(path string, log *slog.Logger) (net.Listener, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: unix: needs a path, like unix:/run/lifeboat/nbd.sock", ErrAddress)
	}
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	// The private directory's name adds up to 17 bytes to the bound path.
	if len(path)+17 > maxSocketPath {
		return nil, fmt.Errorf("%w: socket path %s is %d bytes; use one of at most %d", ErrAddress, path, len(path), maxSocketPath-17)
	}
	stale, err := probeSocket(path)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("nbd: socket directory: %w", err)
	}
	private, err := os.MkdirTemp(dir, ".nbd") // mode 0700
	if err != nil {
		return nil, fmt.Errorf("nbd: create socket: %w", err)
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, "s")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("nbd: create socket %s: %w", path, err)
	}
	ul.SetUnlinkOnClose(false) // PATH is removed by unixListener.Close
	if err := os.Chmod(tmp, SocketMode); err != nil {
		ul.Close()
		return nil, fmt.Errorf("nbd: socket mode: %w", err)
	}
	if stale {
		log.Info("nbd: replacing a stale socket that nothing answers on (left by a process that died)", "path", path)
		err = os.Rename(tmp, path) // atomic: never a moment without a socket
	} else {
		err = os.Link(tmp, path) // fails if someone created PATH meanwhile
	}
	if err != nil {
		ul.Close()
		return nil, fmt.Errorf("%w: socket %s: %w", ErrAddress, path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ul.Close()
		return nil, fmt.Errorf("nbd: socket %s: %w", path, err)
	}
	return &unixListener{UnixListener: ul, path: path, fi: fi}, nil
}

// probeSocket reports whether path is a stale socket (nothing answers).
// A missing path is not stale; a live socket or another kind of file is
// an error.
func probeSocket(path string) (stale bool, err error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("nbd: socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return false, fmt.Errorf("%w: %s exists and is not a socket; remove it or choose another path", ErrAddress, path)
	}
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err == nil {
		c.Close()
		return false, fmt.Errorf("%w: another process serves on %s; stop it or choose another path", ErrAddress, path)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return true, nil
	}
	return false, fmt.Errorf("%w: cannot tell whether %s is in use: %w", ErrAddress, path, err)
}

// unixListener is a Unix socket listener bound to path, which Close
// removes.
type unixListener struct {
	*net.UnixListener
	path string
	fi   os.FileInfo // the socket file, to remove only that one
	once sync.Once
}

// Addr is the socket's path (the socket was bound to a temporary name).
func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

// Close stops listening and removes the socket file, unless it was
// replaced meanwhile.
func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, e := os.Lstat(l.path); e == nil && os.SameFile(fi, l.fi) {
			os.Remove(l.path)
		}
	})
	return err
}

// URI is the NBD URI clients use to reach export name on a listener at
// addr: nbd://HOST:PORT/NAME, or nbd+unix:///NAME?socket=PATH.
func URI(addr net.Addr, name string) string {
	if ua, ok := addr.(*net.UnixAddr); ok {
		socket := strings.ReplaceAll(url.QueryEscape(ua.Name), "%2F", "/")
		return "nbd+unix:///" + url.PathEscape(name) + "?socket=" + socket
	}
	return "nbd://" + addr.String() + "/" + url.PathEscape(name)
}

// peerName names the other end of a connection for the log: its address,
// or for a Unix socket the client's pid and uid.
func peerName(nc net.Conn) string {
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return nc.RemoteAddr().String()
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return "unix"
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return "unix"
	}
	return fmt.Sprintf("unix:pid=%d,uid=%d", cred.Pid, cred.Uid)
}
