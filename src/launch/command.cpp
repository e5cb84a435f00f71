#include "ds/launch/command.h"

#include <algorithm>
#include <cctype>
#include <sstream>

#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace ds::launch {

namespace {

bool is_shell_safe(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) ||
         std::string_view("_@%+=:,./-").find(c) != std::string_view::npos;
}

bool is_env_key(std::string_view key) {
  if (key.empty() || std::isdigit(static_cast<unsigned char>(key[0]))) return false;
  return std::all_of(key.begin(), key.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size()))
    s.replace(pos, from.size(), to);
}

std::string basename_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Rejects placeholders we do not know ({hots}), so a typo does not reach the remote shell.
void check_placeholders(std::string_view tmpl) {
  static const std::vector<std::string> known = {"host", "node_rank", "cmd"};
  for (size_t open = tmpl.find('{'); open != std::string_view::npos; open = tmpl.find('{', open + 1)) {
    size_t close = tmpl.find('}', open);
    if (close == std::string_view::npos) break;
    std::string name(tmpl.substr(open + 1, close - open - 1));
    bool identifier = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
    });
    if (!identifier || std::find(known.begin(), known.end(), name) != known.end()) continue;
    std::string hint = nearest(name, known);
    throw ConfigError(str("--launcher_cmd '", tmpl, "': unknown placeholder {", name, "}",
                          hint.empty() ? std::string(" (known: {host}, {node_rank}, {cmd})")
                                       : str("; did you mean {", hint, "}?")));
  }
}

std::string format_seconds(double s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

std::string strip_matching_quotes(std::string v) {
  if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front())
    return v.substr(1, v.size() - 2);
  return v;
}

}  // namespace

std::string shell_quote(std::string_view word) {
  if (!word.empty() && std::all_of(word.begin(), word.end(), is_shell_safe)) return std::string(word);
  std::string out = "'";
  for (char c : word) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

std::string shell_join(const std::vector<std::string>& words) {
  std::string out;
  for (const auto& w : words) out += (out.empty() ? "" : " ") + shell_quote(w);
  return out;
}

std::vector<std::string> split_shell_words(std::string_view text) {
  std::vector<std::string> words;
  std::string cur;
  bool in_word = false;
  char quote = 0;  // 0, '\'' or '"'
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (quote == '\'') {
      if (c == '\'')
        quote = 0;
      else
        cur += c;
    } else if (quote == '"') {
      if (c == '"') {
        quote = 0;
      } else if (c == '\\' && i + 1 < text.size() &&
                 std::string_view("$`\"\\\n").find(text[i + 1]) != std::string_view::npos) {
        cur += text[++i];
      } else {
        cur += c;
      }
    } else if (std::isspace(static_cast<unsigned char>(c))) {
      if (in_word) words.push_back(std::move(cur)), cur.clear(), in_word = false;
    } else if (c == '\'' || c == '"') {
      quote = c, in_word = true;
    } else if (c == '\\' && i + 1 < text.size()) {
      cur += text[++i], in_word = true;
    } else {
      cur += c, in_word = true;
    }
  }
  if (quote)
    throw ConfigError(str("unterminated ", quote == '"' ? "double" : "single", " quote in '", text, "'"));
  if (in_word) words.push_back(std::move(cur));
  return words;
}

std::vector<std::string> expand_remote_template(std::string_view tmpl, const std::string& host, int node_rank,
                                                const std::vector<std::string>& node_command) {
  check_placeholders(tmpl);
  std::vector<std::string> words = split_shell_words(tmpl);
  if (words.empty()) throw ConfigError("--launcher_cmd is empty");
  if (tmpl.find("{host}") == std::string_view::npos && tmpl.find("{node_rank}") == std::string_view::npos)
    throw ConfigError(
        str("--launcher_cmd '", tmpl,
            "' mentions neither {host} nor {node_rank}: every node would run in the same place"));
  bool has_cmd = tmpl.find("{cmd}") != std::string_view::npos;
  std::string program = basename_of(words[0]);
  if (!has_cmd && (program == "ssh" || program == "rsh")) words.push_back("{cmd}"), has_cmd = true;
  const std::string joined = shell_join(node_command);
  for (std::string& w : words) {
    replace_all(w, "{host}", host);
    replace_all(w, "{node_rank}", std::to_string(node_rank));
    replace_all(w, "{cmd}", joined);
  }
  if (!has_cmd) words.insert(words.end(), node_command.begin(), node_command.end());
  return words;
}

std::vector<std::string> node_command(const NodeCommandSpec& spec) {
  std::vector<std::string> argv = {
      spec.launcher_path,
      "--node_rank=" + std::to_string(spec.node_rank),
      "--world_info=" + encode_world(spec.world),
      "--master_addr=" + spec.master.addr,
      "--master_port=" + std::to_string(spec.master.port),
      "--kill_timeout=" + format_seconds(spec.kill_timeout_s),
      "--watch_stdin",
  };
  if (!spec.workdir.empty()) argv.push_back("--workdir=" + spec.workdir);
  if (!spec.prefix_output) argv.push_back("--no_prefix");
  for (const EnvVar& e : spec.exports) argv.push_back("--env=" + e.first + "=" + e.second);
  argv.push_back("--");
  argv.insert(argv.end(), spec.program.begin(), spec.program.end());
  return argv;
}

std::vector<std::string> mpirun_command(const MpirunSpec& spec) {
  std::string hosts;
  for (const Node& n : spec.world)
    hosts += (hosts.empty() ? "" : ",") + n.host + ":" + std::to_string(n.slots.size());
  std::vector<std::string> argv = {spec.mpirun, "-np", std::to_string(world_size(spec.world)), "--host",
                                   hosts};
  if (spec.allow_run_as_root) argv.push_back("--allow-run-as-root");
  argv.insert(argv.end(), spec.extra_args.begin(), spec.extra_args.end());
  auto export_var = [&](const std::string& x) {
    argv.push_back("-x");
    argv.push_back(x);
  };
  export_var("MASTER_ADDR=" + spec.master.addr);
  export_var("MASTER_PORT=" + std::to_string(spec.master.port));
  for (const std::string& name : spec.pass_env) export_var(name);
  for (const EnvVar& e : spec.exports) export_var(e.first + "=" + e.second);
  argv.insert(argv.end(), spec.program.begin(), spec.program.end());
  return argv;
}

std::vector<std::string> srun_command(const SrunSpec& spec) {
  auto join = [](const std::vector<std::string>& items) {
    std::string out;
    for (const std::string& i : items) out += (out.empty() ? "" : ",") + i;
    return out;
  };
  std::vector<std::string> argv = {spec.srun};
  if (spec.nodes > 0) argv.push_back("--nodes=" + std::to_string(spec.nodes));
  argv.push_back("--ntasks-per-node=" + std::to_string(spec.tasks_per_node));
  if (!spec.nodelist.empty()) argv.push_back("--nodelist=" + join(spec.nodelist));
  if (!spec.exclude.empty()) argv.push_back("--exclude=" + join(spec.exclude));
  // One failed rank ends the step (the others would wait for it in a collective).
  argv.insert(argv.end(), {"--kill-on-bad-exit=1", "--export=ALL"});
  argv.insert(argv.end(), spec.extra_args.begin(), spec.extra_args.end());
  argv.insert(argv.end(), spec.program.begin(), spec.program.end());
  return argv;
}

EnvVar parse_env_assignment(std::string_view text) {
  size_t eq = text.find('=');
  std::string key(text.substr(0, eq));
  if (eq == std::string_view::npos || !is_env_key(key))
    throw ConfigError(str("--env '", text, "': expected KEY=VALUE with KEY made of letters, digits and '_'"));
  return {key, std::string(text.substr(eq + 1))};
}

std::vector<EnvVar> parse_env_file(std::string_view text, std::string_view source) {
  std::vector<EnvVar> out;
  int line_no = 0;
  for (const std::string& raw : split(text, '\n')) {
    ++line_no;
    std::string line = trim(raw);
    if (line.empty() || line[0] == '#') continue;
    if (starts_with(line, "export ")) line = trim(std::string_view(line).substr(7));
    size_t eq = line.find('=');
    std::string key = eq == std::string::npos ? line : trim(std::string_view(line).substr(0, eq));
    if (eq == std::string::npos || !is_env_key(key))
      throw ConfigError(str(source, ":", line_no, ": expected KEY=VALUE, got '", line, "'"));
    set_env_var(out, {key, strip_matching_quotes(trim(std::string_view(line).substr(eq + 1)))});
  }
  return out;
}

std::vector<EnvVar> select_exported_env(const std::vector<std::string>& environ_entries) {
  static const std::vector<std::string> exact = {"PATH", "LD_LIBRARY_PATH"};
  static const std::vector<std::string> prefixes = {"OMP_", "MKL_",   "KMP_",   "OPENBLAS_", "GLOO_", "NCCL_",
                                                    "UCX_", "TORCH_", "PYTHON", "MLFLOW",    "MV2_",  "DS_"};
  static const std::vector<std::string> never = {"DS_LAUNCHER_CMD"};  // only the driver needs it
  std::vector<EnvVar> out;
  for (const std::string& entry : environ_entries) {
    size_t eq = entry.find('=');
    if (eq == std::string::npos) continue;
    std::string key = entry.substr(0, eq);
    if (std::find(never.begin(), never.end(), key) != never.end()) continue;
    bool wanted = std::find(exact.begin(), exact.end(), key) != exact.end() ||
                  std::any_of(prefixes.begin(), prefixes.end(),
                              [&](const std::string& p) { return starts_with(key, p); });
    if (wanted && is_env_key(key)) set_env_var(out, {key, entry.substr(eq + 1)});
  }
  return out;
}

void set_env_var(std::vector<EnvVar>& env, const EnvVar& var) {
  for (EnvVar& e : env)
    if (e.first == var.first) {
      e.second = var.second;
      return;
    }
  env.push_back(var);
}

}  // namespace ds::launch
