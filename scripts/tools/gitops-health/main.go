// Command gitops-health gives the verdicts that GitOps tools reach on AsyncWorkerPool objects, with
// their own code: Argo CD's custom health check (a Lua script, run by gopher-lua, the interpreter
// Argo CD embeds, the way Argo CD runs it) and kstatus (what Flux's health checks and
// `kubectl wait`-style tooling compute). The tests feed it pools read from a real cluster.
//
//	gitops-health HEALTH.lua < list.json
//
// list.json is `kubectl get asyncworkerpools -o json`; one JSON line per pool is printed:
// {"name":"…","argo":{"status":"…","message":"…"},"kstatus":{"status":"…","message":"…"}}
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

type report struct {
	Name    string  `json:"name"`
	Argo    verdict `json:"argo"`
	Kstatus verdict `json:"kstatus"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gitops-health HEALTH.lua < list.json")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "gitops-health:", err)
		os.Exit(1)
	}
}

func run(scriptPath string, in io.Reader, out io.Writer) error {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return err
	}
	input, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	// Unstructured decoding keeps integers as int64, as kstatus expects of objects from a client.
	var list unstructured.UnstructuredList
	if err := list.UnmarshalJSON(input); err != nil {
		return fmt.Errorf("decode the list: %w", err)
	}
	encoder := json.NewEncoder(out)
	for i := range list.Items {
		item := &list.Items[i]
		argo, err := argoHealth(string(script), item.Object)
		if err != nil {
			return fmt.Errorf("%s: lua: %w", item.GetName(), err)
		}
		computed, err := status.Compute(item)
		if err != nil {
			return fmt.Errorf("%s: kstatus: %w", item.GetName(), err)
		}
		if err := encoder.Encode(report{
			Name:    item.GetName(),
			Argo:    argo,
			Kstatus: verdict{Status: computed.Status.String(), Message: computed.Message},
		}); err != nil {
			return err
		}
	}
	return nil
}

// argoHealth runs a health script as Argo CD does: the object as the global `obj`, only the
// safe standard libraries open, and the returned table read as {status, message}.
func argoHealth(script string, object map[string]interface{}) (verdict, error) {
	state := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer state.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
	} {
		state.Push(state.NewFunction(lib.open))
		state.Push(lua.LString(lib.name))
		state.Call(1, 0)
	}
	state.SetGlobal("obj", toLua(state, object))
	if err := state.DoString(script); err != nil {
		return verdict{}, err
	}
	result, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		return verdict{}, fmt.Errorf("the script returned %s, not a table", state.Get(-1).Type())
	}
	return verdict{
		Status:  lua.LVAsString(result.RawGetString("status")),
		Message: lua.LVAsString(result.RawGetString("message")),
	}, nil
}

func toLua(state *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []interface{}:
		table := state.NewTable()
		for _, element := range v {
			table.Append(toLua(state, element))
		}
		return table
	case map[string]interface{}:
		table := state.NewTable()
		for key, element := range v {
			table.RawSetString(key, toLua(state, element))
		}
		return table
	default:
		return lua.LString(fmt.Sprint(v))
	}
}
