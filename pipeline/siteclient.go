package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// Call sends an API request (method, url: https://HOST:PORT/v1/...) with
// in, when not nil, as its JSON body, and decodes a 200's JSON answer into
// out (when not nil). Any other answer is an error wrapping the package
// error its status stands for (ErrForbidden, ErrNoReplica, ...) with the
// server's message: what the CLI and the demo use to talk to a site.
func Call(ctx context.Context, client *http.Client, method, url string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decodeReply(resp, out)
}

// PointDownload is a point's image being read from the site. Read returns
// exactly Size bytes and then io.EOF; a body that ends early (the server
// stopped, the connection broke) is io.ErrUnexpectedEOF, one that is longer
// is an error: a download never looks complete when it is not.
type PointDownload struct {
	Seq  uint64
	Name string
	Size int64
	body io.ReadCloser
	read int64
}

// GetPoint starts the download of a point ("latest" or a seq) of the
// volume at volumeURL (https://HOST:PORT/v1/volumes/KEY) with an admin's
// client.
func GetPoint(ctx context.Context, client *http.Client, volumeURL, point string) (*PointDownload, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, volumeURL+"/points/"+url.PathEscape(point), nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, decodeReply(resp, nil)
	}
	d := &PointDownload{Name: resp.Header.Get(hdrPointName), body: resp.Body}
	seq, err1 := strconv.ParseUint(resp.Header.Get(hdrPointSeq), 10, 64)
	size, err2 := strconv.ParseInt(resp.Header.Get(hdrPointSize), 10, 64)
	if err1 != nil || err2 != nil || size < 0 || resp.ContentLength != size {
		resp.Body.Close()
		return nil, fmt.Errorf("point %s: the answer does not say the image's seq and size (%s %q, %s %q, Content-Length %d)",
			point, hdrPointSeq, resp.Header.Get(hdrPointSeq), hdrPointSize, resp.Header.Get(hdrPointSize), resp.ContentLength)
	}
	d.Seq, d.Size = seq, size
	return d, nil
}

func (d *PointDownload) Read(p []byte) (int, error) {
	n, err := d.body.Read(p)
	d.read += int64(n)
	switch {
	case d.read > d.Size:
		return n, fmt.Errorf("point %d: the image is longer than its %d bytes", d.Seq, d.Size)
	case err == io.EOF && d.read < d.Size:
		err = io.ErrUnexpectedEOF
	case err == nil || err == io.EOF:
		return n, err
	}
	return n, fmt.Errorf("point %d: received %d of %d bytes: %w", d.Seq, d.read, d.Size, err)
}

// Close ends the download.
func (d *PointDownload) Close() error { return d.body.Close() }
