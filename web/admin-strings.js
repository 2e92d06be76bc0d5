// The operator console's words, one table per language. Korean first:
// English when the browser prefers it or the address says ?lang=en
// (?lang=ko forces Korean). Static text in admin.html carries data-t (its
// text), data-t-placeholder, data-t-label (aria-label) or data-t-title.

const KO = {
  title: "bizcall 운영 콘솔", heading: "bizcall 콘솔",
  signedOut: "로그아웃됨", signOut: "로그아웃", live: "실시간", reconnecting: "다시 연결하는 중…",
  signIn: "로그인", adminToken: "관리자 토큰 (admin.token)",
  sections: "메뉴", stores: "매장", calls: "통화",
  storesCaption: "매장, 번호, 클러스터 전체에서 연결된 태블릿, 마지막 통화",
  colStore: "매장", colNumbers: "번호", colTablets: "연결된 태블릿", colLastCall: "마지막 통화",
  noStores: "아직 매장이 없습니다.",
  addStore: "매장 추가", slug: "슬러그(영문 식별자)", name: "이름", numbersComma: "번호 (쉼표로 구분)", addStoreButton: "매장 추가",
  rename: "이름 바꾸기",
  anonymous: "토큰 없는 태블릿도 이 매장의 통화를 볼 수 있음 (읽기 전용, compat.anonymous 필요)",
  numbers: "번호", addNumber: "번호 추가", add: "추가",
  tokens: "태블릿 토큰", tokensCaption: "이 매장의 토큰",
  colLabel: "이름표", colCreated: "발급", colLastSeen: "마지막 접속", colOnline: "지금 연결", colActions: "작업",
  label: "이름표", issueToken: "토큰 발급",
  issuedTitle: "새 토큰 — 이번 한 번만 보입니다", issuedQr: "QR 코드: 이 토큰으로 여는 태블릿 페이지",
  issuedHow: "태블릿으로 스캔하거나, 태블릿 로그인 화면에 토큰을 입력하세요:", issuedDone: "확인, 숨기기",
  removeStore: "매장 삭제…",
  filterStore: "매장", allStores: "모든 매장", filterStatus: "상태", any: "전체",
  status: { ringing: "벨 울림", answered: "통화 중", missed: "놓친 전화", completed: "통화 완료" },
  day: "날짜 (한국 시간, yyyy-mm-dd)", dayTitle: "yyyy-mm-dd, 한국 시간 기준 날짜", show: "보기",
  callsCaption: "최근 통화: 하나를 고르면 전달 기록이 보입니다",
  colStarted: "시작", colCaller: "발신 번호", colStatus: "상태", colAcknowledged: "확인", colCalledBack: "다시 걸었음", notCalledBack: "아직 안 걸었음",
  noCalls: "통화가 없습니다.", trail: "전달 기록",
  tokenRefused: "관리자 토큰이 거부되었습니다.",
  adminOff: "이 서버에서는 관리 기능이 꺼져 있습니다 (admin.token이 설정되지 않음).",
  remove: "삭제", removeNumber: (n) => "번호 " + n + " 삭제",
  noNumbers: "번호가 없습니다: 이 매장으로 전화가 연결되지 않습니다.",
  noLabel: "(이름표 없음)", revoked: (at) => "폐기됨 " + at,
  revoke: "폐기", revokeToken: (t) => "토큰 " + t + " 폐기",
  confirmRevoke: (t) => t + " 토큰을 폐기할까요? 이 토큰을 쓰는 태블릿은 몇 초 안에 연결이 끊깁니다.",
  verdict: {
    "acknowledged": "표시되었고 확인됨",
    "shown-not-acknowledged": "태블릿에 표시됨, 아직 확인 안 됨",
    "slow-consumer": "표시 안 됨: 태블릿이 느려서 연결이 끊김",
    "no-tablet-online": "표시 안 됨: 매장 태블릿이 연결되어 있지 않았음",
    "expired": "표시 안 됨: 도착했을 때 이미 만료됨",
    "not-published": "저장됨, 아직 버스에 전달 안 됨",
    "in-flight": "저장·전달됨, 표시 기록은 아직 없음",
  },
  outcome: {
    "delivered": "전달됨", "no-tablet": "그 인스턴스에 매장 태블릿 없음",
    "expired": "만료된 뒤 도착", "slow-consumer": "태블릿이 느려서 끊김", "received": "CDR 수신",
  },
  trailTitle: (num, store, id) => "전달 기록: " + num + " → " + store + " (" + id + ")",
  receivedBy: (who, at) => "수신: " + who + " (" + at + ")",
  storedAt: (at) => "저장: " + at,
  localPublished: (at) => "프로세스 내부 버스에 전달됨 (인스턴스 하나, 브로커 없음)" + at,
  localPending: "아직 프로세스 내부 버스에 전달 안 됨",
  amqpPublished: (at) => "RabbitMQ에 발행, 확인받음" + at,
  amqpPending: "아직 RabbitMQ 확인 없음",
  at: (when) => " (" + when + ")",
  reached: (n, at, labels) => "태블릿 " + n + "대 (" + at + ") — 표시: " + labels,
  gone: " (지금은 없는 인스턴스)",
  firstAck: (who, at) => "처음 확인: " + who + " (" + at + ")",
  notAcked: "확인 안 됨",
  confirmRemove: (name, slug, r, online) => name + " (" + slug + ") 매장을 삭제할까요?\n\n없어지는 것: 번호 " + r.numbers +
    "개, 사용 중인 토큰 " + r.activeTokens + "개" + (online ? ", 연결된 태블릿 " + online + "대의 연결" : "") +
    ".\n남는 것: 통화 목록의 통화 " + r.callsKept + "건.",
};

const EN = {
  title: "bizcall operator console", heading: "bizcall console",
  signedOut: "Signed out", signOut: "Sign out", live: "Live", reconnecting: "Reconnecting…",
  signIn: "Sign in", adminToken: "Admin token (admin.token)",
  sections: "Sections", stores: "Stores", calls: "Calls",
  storesCaption: "Stores, their numbers, tablets online across the cluster and last call",
  colStore: "Store", colNumbers: "Numbers", colTablets: "Tablets online", colLastCall: "Last call",
  noStores: "No stores yet.",
  addStore: "Add a store", slug: "Slug", name: "Name", numbersComma: "Numbers (comma-separated)", addStoreButton: "Add store",
  rename: "Rename",
  anonymous: "Tablets without a token may follow this store (read-only; needs compat.anonymous)",
  numbers: "Numbers", addNumber: "Add a number", add: "Add",
  tokens: "Tablet tokens", tokensCaption: "Tokens of this store",
  colLabel: "Label", colCreated: "Created", colLastSeen: "Last seen", colOnline: "Online now", colActions: "Actions",
  label: "Label", issueToken: "Issue token",
  issuedTitle: "New token — shown only this once", issuedQr: "QR code: the tablet page with this token",
  issuedHow: "Scan with the tablet, or type the token on its sign-in screen:", issuedDone: "Done, hide it",
  removeStore: "Remove store…",
  filterStore: "Store", allStores: "All stores", filterStatus: "Status", any: "Any",
  status: { ringing: "ringing", answered: "answered", missed: "missed", completed: "completed" },
  day: "Day (Korea time, yyyy-mm-dd)", dayTitle: "yyyy-mm-dd, a day in Korea time", show: "Show",
  callsCaption: "Recent calls; choose one to see its delivery trail",
  colStarted: "Started", colCaller: "Caller", colStatus: "Status", colAcknowledged: "Acknowledged", colCalledBack: "Called back", notCalledBack: "not yet",
  noCalls: "No calls.", trail: "Delivery trail",
  tokenRefused: "The admin token was refused.",
  adminOff: "Admin endpoints are off on this server (admin.token is not set).",
  remove: "Remove", removeNumber: (n) => "Remove number " + n,
  noNumbers: "No numbers: calls cannot reach this store.",
  noLabel: "(no label)", revoked: (at) => "revoked " + at,
  revoke: "Revoke", revokeToken: (t) => "Revoke token " + t,
  confirmRevoke: (t) => "Revoke " + t + "? Tablets using it are disconnected within seconds.",
  verdict: {
    "acknowledged": "Shown and acknowledged",
    "shown-not-acknowledged": "Shown on a tablet, not acknowledged",
    "slow-consumer": "Not shown: the tablets were dropped as slow consumers",
    "no-tablet-online": "Not shown: no tablet of the store was online",
    "expired": "Not shown: the call had expired when it arrived",
    "not-published": "Stored, not yet published to the bus",
    "in-flight": "Stored and published; delivery not recorded yet",
  },
  outcome: {
    "delivered": "reached", "no-tablet": "no tablet of the store connected there",
    "expired": "arrived expired", "slow-consumer": "tablets dropped as slow consumers",
    "received": "took the CDR in",
  },
  trailTitle: (num, store, id) => "Delivery trail: " + num + " → " + store + " (" + id + ")",
  receivedBy: (who, at) => "Received by " + who + " at " + at,
  storedAt: (at) => "Stored at " + at,
  localPublished: (at) => "Handed to the in-process bus (one instance, no broker)" + at,
  localPending: "Not yet handed to the in-process bus",
  amqpPublished: (at) => "Published, confirmed by RabbitMQ" + at,
  amqpPending: "Not yet confirmed by RabbitMQ",
  at: (when) => " at " + when,
  reached: (n, at, labels) => n + " tablet" + (n === 1 ? "" : "s") + " at " + at + " — shown on " + labels,
  gone: " (instance no longer running)",
  firstAck: (who, at) => "First acknowledged by " + who + " at " + at,
  notAcked: "Not acknowledged",
  confirmRemove: (name, slug, r, online) => "Remove " + name + " (" + slug + ")?\n\nGoes: " + r.numbers + " number(s), " +
    r.activeTokens + " active token(s)" + (online ? ", and its " + online + " tablet(s) online are disconnected" : "") +
    ".\nStays: its " + r.callsKept + " call(s) in the call list.",
};

function choose() {
  const asked = new URLSearchParams(location.search).get("lang");
  if (asked === "en" || asked === "ko") return asked;
  for (const l of navigator.languages || [navigator.language || ""]) {
    if (l.toLowerCase().startsWith("ko")) return "ko";
    if (l.toLowerCase().startsWith("en")) return "en";
  }
  return "ko";
}

export const LANG = choose();
export const T = LANG === "en" ? EN : KO;

// Puts the chosen language's words into the page's static text.
export function translatePage() {
  document.documentElement.lang = LANG;
  document.title = T.title;
  for (const e of document.querySelectorAll("[data-t]")) {
    const k = e.dataset.t;
    e.textContent = k.startsWith("status.") ? T.status[k.slice(7)] : T[k];
  }
  for (const e of document.querySelectorAll("[data-t-label]")) e.setAttribute("aria-label", T[e.dataset.tLabel]);
  for (const e of document.querySelectorAll("[data-t-title]")) e.setAttribute("title", T[e.dataset.tTitle]);
  for (const e of document.querySelectorAll("[data-t-alt]")) e.setAttribute("alt", T[e.dataset.tAlt]);
}
