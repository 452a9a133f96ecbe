package failback

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"lifeboat/hrl"
	"lifeboat/pipeline"
	"lifeboat/tracker"
)

// drained opens p's replica on the process server and waits until what it
// has spooled is on the disk, so that the disk is what the site sent.
func (m *MasterTarget) drained(r *http.Request, p *primary) (pipeline.SiteVolume, error) {
	sv, err := m.Server.Volume(r.Context(), p.info.ID)
	if err != nil {
		return sv, err
	}
	return sv, sv.Drain(r.Context(), nil)
}

func (m *MasterTarget) getVolume(_ http.ResponseWriter, r *http.Request, p *primary) (any, error) {
	m.mu.Lock()
	out := Volume{Info: p.info, Unshipped: p.unshipped, Adopted: p.adopted}
	m.mu.Unlock()
	sv, err := m.Server.Volume(r.Context(), p.info.ID)
	if err != nil {
		if out.Adopted != nil { // retired: the disk is its agent's again
			return out, nil
		}
		return nil, err
	}
	st, err := sv.Replica().State(r.Context())
	if err != nil {
		return nil, err
	}
	out.AppliedGeneration, out.AppliedSeq = st.Generation, st.Seq
	return out, nil
}

// hashes answers HashSize bytes per block of each range, read from the
// disk once what is spooled is applied.
func (m *MasterTarget) hashes(w http.ResponseWriter, r *http.Request, p *primary) (any, error) {
	req, err := decodeHashRequest(io.LimitReader(r.Body, 256<<20), p.info.Size)
	if err != nil {
		return nil, err
	}
	if _, err := m.drained(r, p); err != nil {
		return nil, err
	}
	f, err := os.Open(p.Path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	buf := make([]byte, max(req.Block, 1<<20))
	var out []byte
	for _, rg := range req.Ranges {
		if out, err = hashBlocks(f, rg.Off, rg.Len, req.Block, buf, out[:0]); err != nil {
			return nil, err // nothing written yet for this range: the client sees a short body
		}
		if _, err := w.Write(out); err != nil {
			return nil, nil
		}
	}
	return nil, nil
}

// decodeHashRequest reads a HashRequest for a volume of size bytes and
// checks it: a block a multiple of 512 up to 64 MiB, ranges inside the
// volume and starting on a block.
func decodeHashRequest(r io.Reader, size int64) (HashRequest, error) {
	var req HashRequest
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("%w: hash request: %v", pipeline.ErrPermanent, err)
	}
	if req.Block == 0 {
		req.Block = HashBlock
	}
	if req.Block < 512 || req.Block > 64<<20 || req.Block%512 != 0 {
		return req, fmt.Errorf("%w: hash block %d: a multiple of 512 from 512 to 64 MiB", pipeline.ErrPermanent, req.Block)
	}
	for _, rg := range req.Ranges {
		if rg.Off < 0 || rg.Len < 0 || rg.Off > size-rg.Len || rg.Off%req.Block != 0 {
			return req, fmt.Errorf("%w: range [%d, +%d) is outside the volume (%d bytes) or not aligned to the block (%d)",
				pipeline.ErrPermanent, rg.Off, rg.Len, size, req.Block)
		}
	}
	return req, nil
}

// adopt hands p back to its agent: once the disk has the failback's tag,
// the journal directory is rebased so that forward replication resumes
// with no initial replication. Repeating it is harmless.
func (m *MasterTarget) adopt(_ http.ResponseWriter, r *http.Request, p *primary) (any, error) {
	var req AdoptRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf("%w: adopt request: %v", pipeline.ErrPermanent, err)
	}
	if req.Generation == 0 || req.NextSeq < 2 || req.TagSeq == 0 {
		return nil, fmt.Errorf("%w: adopt request %+v: generation, next seq and tag must be set", pipeline.ErrPermanent, req)
	}
	sv, err := m.drained(r, p)
	if err != nil {
		return nil, err
	}
	st, err := sv.Replica().State(r.Context())
	if err != nil {
		return nil, err
	}
	if st.Seq < req.TagSeq {
		return nil, fmt.Errorf("%w: the disk has reverse replication up to seq %d, not the failback's tag %d yet", pipeline.ErrRecoveryState, st.Seq, req.TagSeq)
	}
	m.mu.Lock()
	done := p.adopted
	m.mu.Unlock()
	if done != nil && *done != req {
		return nil, fmt.Errorf("%w: %s was handed back already (generation %d from seq %d)", pipeline.ErrRecoveryState, p.Name, done.Generation, done.NextSeq)
	}
	m.disks.Retire(p.info.ID, "a failback handed it back to its agent")
	if err := saveAdopted(m.DataDir, p.info.ID, req); err != nil {
		return nil, err
	}
	if err := tracker.Rebase(p.JournalDir, p.info.Size, req.Generation, req.NextSeq); err != nil {
		return nil, fmt.Errorf("rebase the agent's journal of %s: %w", p.Name, err)
	}
	m.mu.Lock()
	p.adopted = &req
	m.mu.Unlock()
	m.logger().Info("primary volume handed back to its agent: stop the master target and start the agent; "+
		"forward replication resumes with no initial replication", "volume", p.Name, "generation", req.Generation, "next_seq", req.NextSeq)
	return m.getVolume(nil, r, p)
}

func adoptedPath(dataDir, id string) string {
	return filepath.Join(dataDir, "disks", id+".adopted.json")
}

func saveAdopted(dataDir, id string, req AdoptRequest) error {
	b, _ := json.Marshal(req)
	return hrl.WriteFileDurably(hrl.OSFS{}, filepath.Join(dataDir, "disks"), id+".adopted.json", b)
}

func loadAdopted(dataDir, id string) (*AdoptRequest, error) {
	b, err := os.ReadFile(adoptedPath(dataDir, id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var req AdoptRequest
	if err := json.Unmarshal(b, &req); err != nil {
		return nil, fmt.Errorf("%s: %w", adoptedPath(dataDir, id), err)
	}
	return &req, nil
}
