package nbd_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"testing"

	"lifeboat/nbd"
)

// nullBackend does no I/O, so the benchmark measures the server alone.
type nullBackend struct{}

func (nullBackend) ReadAt(p []byte, off int64) (int, error)  { return len(p), nil }
func (nullBackend) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (nullBackend) WriteZeroes(off, n int64) error           { return nil }
func (nullBackend) Trim(off, n int64) error                  { return nil }
func (nullBackend) Flush() error                             { return nil }
func (nullBackend) Size() int64                              { return 1 << 30 }

// BenchmarkServer drives READ and WRITE at queue depth 16 over loopback
// with structured replies. allocs/op counts the whole process; the client
// here allocates nothing per request, so it is the server's data path.
func BenchmarkServer(b *testing.B) {
	addr := serveExports(b, nbd.Export{Name: "null", Backend: nullBackend{}})
	for _, cmd := range []uint16{cmdRead, cmdWrite} {
		for _, size := range []int{4 << 10, 1 << 20} {
			name := map[uint16]string{cmdRead: "read", cmdWrite: "write"}[cmd]
			b.Run(fmt.Sprintf("%s-%dk", name, size>>10), func(b *testing.B) {
				c := dial(b, addr)
				c.negotiateStructured()
				c.goExport("null")
				benchPipeline(b, c, cmd, size, 16)
			})
		}
	}
}

func benchPipeline(b *testing.B, c *client, cmd uint16, size, depth int) {
	req := make([]byte, requestHeaderSize+size)
	binary.BigEndian.PutUint32(req[0:], 0x25609513)
	binary.BigEndian.PutUint16(req[6:], cmd)
	binary.BigEndian.PutUint32(req[24:], uint32(size))
	if cmd == cmdRead {
		req = req[:requestHeaderSize]
	}
	tokens := make(chan struct{}, depth)
	errc := make(chan error, 1)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		br := bufio.NewReaderSize(c.nc, 256<<10)
		var h [20]byte
		for i := 0; i < b.N; i++ {
			if _, err := io.ReadFull(br, h[:4]); err != nil {
				errc <- err
				return
			}
			n := simpleReplySize - 4
			if binary.BigEndian.Uint32(h[:]) == 0x668e33ef {
				if _, err := io.ReadFull(br, h[4:]); err != nil {
					errc <- err
					return
				}
				n = int(binary.BigEndian.Uint32(h[16:]))
			}
			if _, err := br.Discard(n); err != nil {
				errc <- err
				return
			}
			<-tokens
		}
		errc <- nil
	}()
	for i := 0; i < b.N; i++ {
		tokens <- struct{}{}
		binary.BigEndian.PutUint64(req[8:], uint64(i))
		binary.BigEndian.PutUint64(req[16:], uint64(i%1024)*uint64(size)%(1<<30-uint64(size)))
		if _, err := c.nc.Write(req); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}

const (
	requestHeaderSize = 28
	simpleReplySize   = 16
)
