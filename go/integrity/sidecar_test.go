package integrity

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSidecar(t *testing.T) {
	const good = `{"format": "model-streamer-checksums", "version": 1, "algorithm": "crc32", "size": 100,
	 "total": "0badf00d", "header": {"offsets": [0, 16], "checksum": "00000001"},
	 "tensors": [{"name": "b", "offsets": [60, 100], "checksum": "00000003"},
	             {"name": "a", "offsets": [16, 60], "checksum": "00000002"},
	             {"name": "empty", "offsets": [60, 60], "checksum": "00000000"}]}`
	cases := []struct {
		name, from, to string
		why            string // "" : valid
	}{
		{"valid", "", "", ""},
		{"not json", `{"format"`, `{"format`, "not valid JSON"},
		{"other format", `"model-streamer-checksums"`, `"x"`, "format"},
		{"other version", `"version": 1`, `"version": 2`, "version 2"},
		{"md5", `"crc32"`, `"md5"`, "algorithm"},
		{"short checksum", `"00000003"`, `"0003"`, "not 4 bytes"},
		{"past the end", `[60, 100]`, `[60, 101]`, "outside"},
		{"overlap", `[16, 60]`, `[16, 61]`, "overlap"},
		{"empty inside a tensor", `[60, 60]`, `[30, 30]`, "overlap"},
		{"header not first", `[0, 16]`, `[1, 16]`, "not 0"},
		{"bad total", `"0badf00d"`, `"xyz"`, "total"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc := strings.Replace(good, c.from, c.to, 1)
			sc, entries, err := ParseSidecar("s3://b/m.safetensors.checksums.json", []byte(doc))
			if c.why == "" {
				if err != nil {
					t.Fatal(err)
				}
				if sc.Size != 100 || len(entries) != 4 || entries[0].End != 16 || entries[1].Name != "a" || entries[1].Sum != 2 ||
					entries[3].Name != "b" {
					t.Fatalf("entries %+v", entries)
				}
				return
			}
			var se *SidecarError
			if !errors.As(err, &se) || !errors.Is(err, ErrSidecar) || !errors.Is(err, ErrChecksum) ||
				!strings.Contains(err.Error(), c.why) || !strings.Contains(err.Error(), "s3://b/m.safetensors.checksums.json") {
				t.Fatalf("got %v, want a SidecarError saying %q", err, c.why)
			}
		})
	}
}

func TestSidecarName(t *testing.T) {
	for in, want := range map[string]string{
		"/m/model.safetensors":                                              "/m/model.safetensors.checksums.json",
		"s3://b/p/model.safetensors":                                        "s3://b/p/model.safetensors.checksums.json",
		"file:///m/model.safetensors":                                       "file:///m/model.safetensors.checksums.json",
		"az://c/model-00001.safetensors":                                    "az://c/model-00001.safetensors.checksums.json",
		"s3://b/a?b#c.safetensors":                                          "s3://b/a?b#c.safetensors.checksums.json",
		"https://h/m/model.safetensors?X-Amz-Signature=ab&X-Amz-Expires=60": "https://h/m/model.safetensors.checksums.json?X-Amz-Signature=ab&X-Amz-Expires=60",
		"HTTP://h/model.safetensors#frag":                                   "HTTP://h/model.safetensors.checksums.json#frag",
		"http://h/model.safetensors":                                        "http://h/model.safetensors.checksums.json",
	} {
		if got := SidecarName(in); got != want || strings.HasSuffix(got, ".safetensors") {
			t.Errorf("SidecarName(%q) = %q, want %q", in, got, want)
		}
	}
}
