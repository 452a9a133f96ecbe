package pipeline

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/google/uuid"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/targets"
	"lifeboat/targets/memory"
)

// TestKeepIsBounded: buffers move from the receive memory to the kept
// memory until half the receive memory is kept; then they stay receive
// buffers (and their segments are read back from the spool).
func TestKeepIsBounded(t *testing.T) {
	s := &Server{ReceiveMemory: 1 << 20}
	var kept []*keptBuf
	for i := range 3 {
		bp, err := s.takeBuf(256<<10, 0)
		if err != nil {
			t.Fatal(err)
		}
		k := s.keep(bp, (*bp)[:100])
		if want := i < 2; (k != nil) != want {
			t.Fatalf("buffer %d kept = %v, want %v", i, k != nil, want)
		}
		if k == nil {
			s.releaseBuf(bp)
			continue
		}
		if len(k.data) != 100 {
			t.Fatalf("kept %d bytes of data, want 100", len(k.data))
		}
		kept = append(kept, k)
		if got := s.recvMem.held.Load(); got != 0 {
			t.Fatalf("receive memory %d after keeping, want 0", got)
		}
	}
	if got, want := s.keptMem.held.Load(), int64(512<<10); got != want {
		t.Fatalf("kept memory %d, want %d", got, want)
	}
	for _, k := range kept {
		s.unkeep(k)
	}
	s.unkeep(nil)
	if k, r := s.keptMem.held.Load(), s.recvMem.held.Load(); k != 0 || r != 0 {
		t.Fatalf("after release: kept %d, receive %d, want 0", k, r)
	}
}

// TestApplyFromKeptBuffer: a segment with a kept buffer is applied from
// it, without the spool file; one without is read back from the spool.
func TestApplyFromKeptBuffer(t *testing.T) {
	ctx := context.Background()
	id := uuid.New()
	data := bytes.Repeat([]byte("kept buffer "), 4096)[:8192]
	seg := hrltest.WriteSegment(t, hrl.Header{VolumeID: id, Generation: 1, FirstSeq: 1}, data)
	dir := t.TempDir()
	sp := spool{fs: hrl.OSFS{}, dir: filepath.Join(dir, "spool")}
	if err := sp.fs.MkdirAll(sp.volDir(id.String()), 0o700); err != nil {
		t.Fatal(err)
	}
	sg, err := sp.put(id.String(), spooledSeg{generation: 1, first: 1, last: 1}, seg)
	if err != nil {
		t.Fatal(err)
	}
	target := memory.New()
	info := targets.VolumeInfo{ID: id.String(), Name: "kept", Size: 1 << 20, BlockSize: 4096}
	rep, err := target.Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	img := &imageReplica{Replica: rep, img: make([]byte, info.Size)}
	s := &Server{Target: target, spool: sp}
	v := &volume{info: info, rep: img, srv: s}
	if err := sp.remove(sg); err != nil {
		t.Fatal(err)
	}
	if _, err := v.applySegment(ctx, sg); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("without a kept buffer or a spool file: err = %v, want not exist", err)
	}
	bp := s.bufs.get(int64(len(seg)))
	copy(*bp, seg)
	sg.mem = &keptBuf{bp: bp, data: (*bp)[:len(seg)]}
	n, err := v.applySegment(ctx, sg)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("from the kept buffer: %d bytes, %v; want %d bytes", n, err, len(data))
	}
	if !bytes.Equal(img.img[:len(data)], data) {
		t.Fatal("replica after the apply from memory differs from the data")
	}
	if st, err := rep.State(ctx); err != nil || st.Seq != 1 {
		t.Fatalf("state %+v, %v; want seq 1", st, err)
	}
	clear(img.img)
	v.applied = targets.State{} // apply it again, from the spool
	sg.mem = nil
	if sg, err = sp.put(id.String(), sg, seg); err != nil {
		t.Fatal(err)
	}
	if _, err := v.applySegment(ctx, sg); err != nil || !bytes.Equal(img.img[:len(data)], data) {
		t.Fatalf("from the spool: %v, replica equal %v", err, bytes.Equal(img.img[:len(data)], data))
	}
}

// imageReplica keeps what is applied in an image as well.
type imageReplica struct {
	targets.Replica
	img []byte
}

func (r *imageReplica) Apply(ctx context.Context, exts []targets.Extent) error {
	for _, e := range exts {
		if e.Data != nil {
			copy(r.img[e.Off:], e.Data)
		} else {
			clear(r.img[e.Off : e.Off+e.Len])
		}
	}
	return r.Replica.Apply(ctx, exts)
}
